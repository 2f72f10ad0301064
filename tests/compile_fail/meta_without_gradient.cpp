// Must NOT compile: the meta objective lacks valueAndGradient.
#include <hypergrad/objective.hpp>

struct OnlyValue {
  double value(const Eigen::VectorXd& w) const { return w.squaredNorm(); }
};

int main() {
  hypergrad::checkMetaObjective<OnlyValue>();
  return 0;
}
