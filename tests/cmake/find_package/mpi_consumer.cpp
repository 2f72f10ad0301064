// Built (not run) by the find_package route when MPI is found: the MPI component's headers and
// link line come from the installed package.
#include <hypergrad/mpi.hpp>

#include <memory>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int processes = 0;
  {
    const auto d = std::make_shared<hypergrad::mpi::MpiShardDistribution>();
    processes = d->numProcesses();
  }
  MPI_Finalize();
  return processes >= 1 ? 0 : 1;
}
