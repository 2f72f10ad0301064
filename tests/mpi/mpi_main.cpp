// The Catch2 main of the MPI tests: MPI_Init, every test case on every process (their calls are
// collective, so every process must run the same cases in the same order), MPI_Finalize. Compiled
// on its own without the warning flags, like catch_main.cpp (Catch's implementation is not ours).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <mpi.h>

int main(int argc, char** argv) {
  // OpenMP threads run the shards; MPI is called only from this thread (FUNNELED).
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int result = 0;
  {
    Catch::Session session;
    result = session.run(argc, argv);
  }
  // A process whose checks failed fails the whole run (ctest reads mpiexec's exit status).
  int worst = 0;
  MPI_Allreduce(&result, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst == 0 ? 0 : 1;
}
