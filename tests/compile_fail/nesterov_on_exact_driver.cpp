// Must not compile: Nesterov momentum updates the weights from g_t itself, so the exact driver
// cannot invert its steps; the static_assert points to CheckpointedOptimizer.
#include <hypergrad/optimizers/nesterov.hpp>
#include <hypergrad/optimizers/reversible_optimizer.hpp>

int main() {
  const hypergrad::ParameterLayout layout = hypergrad::ParameterLayout::single(4);
  hypergrad::ReversibleOptimizer<hypergrad::NesterovRule> opt(layout, hypergrad::Schedule::constant(3, 1, 0.1),
                                                               hypergrad::Schedule::constant(3, 1, 0.9));
  return static_cast<int>(opt.size());
}
