// Must not compile: an update rule without adjointState. The static check must name it.
#include <hypergrad/optimizers/reversible_optimizer.hpp>

struct Incomplete {
  static constexpr const char* name = "incomplete";
  static constexpr int numStates = 2;
  static constexpr std::array<const char*, 2> stateNames{{"weights", "velocity"}};
  static constexpr int numSchedules = 1;
  static constexpr std::array<hypergrad::ScheduleSpec, 1> schedules{
      {{"learningRates", "learning-rate schedule", hypergrad::ScheduleDomain::Real}}};
  static constexpr bool directionNeedsGradient = false;
  template <class A, class C>
  static void forwardState(A& a, const C&, double g) {
    a.add(1, g);
  }
  template <class A, class C>
  static void forwardWeights(A& a, const C& c) {
    a.add(0, c[0].value * a.value(1));
  }
  template <class B, class C>
  static void adjointWeights(B&, const C&) {}
  template <class B, class C>
  static void direction(B&, const C&) {}
};

int main() {
  hypergrad::checkRule<Incomplete>();
  return 0;
}
