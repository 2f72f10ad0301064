// Built (not run) by the find_package route when MPI is found: the MPI component's headers and
// link line come from the installed package.
#include <hypergrad/mpi.hpp>

#include <memory>

int main(int argc, char** argv) {
  // OpenMP threads run the shards; MPI is called only from this thread (FUNNELED).
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int processes = 0;
  {
    const auto d = std::make_shared<hypergrad::mpi::MpiShardDistribution>();
    processes = d->numProcesses();
  }
  MPI_Finalize();
  return processes >= 1 ? 0 : 1;
}
