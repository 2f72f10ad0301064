// Quickstart: the hypergradient of a validation loss with respect to a learning-rate schedule,
// for a model written by the user. Only the gradient is written (once, as a template over the
// scalar type); hypergrad derives the Hessian-vector products it needs with forward-mode AD.
#include <cstdio>
#include <hypergrad.hpp>

using Eigen::MatrixXd;
using Eigen::VectorXd;
using hypergrad::Index;
template <class S> using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;

// Least squares on minibatches: L(w, t) = 1/(2b) Σ_{j in batch t} (x_j·w − y_j)².
struct LeastSquares {
  MatrixXd x;
  VectorXd y;
  hypergrad::SeededBatches batches{7, 200, 20};  // batch t is a pure function of (seed, t)
  Index numParameters() const { return x.cols(); }
  Index numHyperparameters() const { return 0; }
  VectorXd hyperparameters() const { return VectorXd(0); }
  template <class S>
  void gradient(const Vec<S>& w, const Vec<S>&, Index t, Vec<S>& g) const {
    g = Vec<S>::Zero(w.size());
    const auto batch = batches(t);
    for (Index j : batch) g += x.row(j).transpose().cast<S>() * (x.row(j).cast<S>().dot(w) - S(y(j)));
    g /= S(double(batch.size()));
  }
};

// The meta objective: mean squared error on held-out data.
struct ValidationLoss {
  MatrixXd x;
  VectorXd y;
  double value(const VectorXd& w) const { return 0.5 * (x * w - y).squaredNorm() / double(x.rows()); }
  double valueAndGradient(const VectorXd& w, VectorXd& g) const {
    g = x.transpose() * (x * w - y) / double(x.rows());
    return value(w);
  }
};

int main() {
  const Index n = 10, T = 50;
  const VectorXd truth = VectorXd::LinSpaced(n, -1, 1);
  const MatrixXd xTrain = MatrixXd::Random(200, n), xValid = MatrixXd::Random(100, n);
  const auto f = hypergrad::makeAutoDiffObjective(LeastSquares{xTrain, xTrain * truth});
  const ValidationLoss valid{xValid, xValid * truth};

  // One group holding all n weights; α_t per iteration, γ = 0.9 throughout.
  const auto layout = hypergrad::ParameterLayout::single(n);
  hypergrad::SgdMomentum<> sgd(layout, hypergrad::Schedule::constant(T, 1, 0.1),
                               hypergrad::Schedule::constant(T, 1, 0.9));
  // Train forward in exact arithmetic, then run training backwards, accumulating hypergradients.
  sgd.start(VectorXd::Zero(n));  // w1 = 0, v1 = 0
  hypergrad::train(sgd, f);
  const double bufferBits = sgd.buffer().informationBits();
  const hypergrad::Hypergradients hg = hypergrad::reverse(sgd, f, valid);  // throws unless exact

  std::printf("validation loss after %ld steps: %.6f\n", long(T), hg.metaObjective);
  std::printf("d loss / d alpha_t for t = 0..4: ");
  for (Index t = 0; t < 5; ++t) std::printf("%+.3e ", hg.learningRates(t, 0));
  std::printf("\nreversed to w1, v1 bit for bit with an empty buffer: %s\n",
              sgd.weights().isZero(0) && sgd.buffer().empty() ? "yes" : "no");
  std::printf("bits kept to reverse %ld steps: %.0f (a stored trajectory: %ld)\n", long(T), bufferBits,
              long(2 * 64 * n * T));
}
