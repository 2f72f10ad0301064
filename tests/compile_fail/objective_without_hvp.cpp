// Must NOT compile: the objective lacks hessianVectorProduct. The test passes when the compiler's
// output contains the static check's message naming the missing member.
#include <hypergrad/objective.hpp>

struct NoHvp {
  hypergrad::Index numParameters() const { return 1; }
  hypergrad::Index numHyperparameters() const { return 0; }
  void gradient(const Eigen::VectorXd& w, hypergrad::Index, Eigen::VectorXd& g) const { g = w; }
  void mixedProduct(const Eigen::VectorXd&, hypergrad::Index, const Eigen::VectorXd&, Eigen::VectorXd& d) const {
    d.resize(0);
  }
};

int main() {
  hypergrad::checkObjective<NoHvp>();
  return 0;
}
