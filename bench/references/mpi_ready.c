/* Launch-latency reference: MPI_Init, a barrier, then rank 0 prints "ready" (as collective-check
 * --ready does for us). Timed from mpirun's start by scripts/bench-launch.sh. */
#include <mpi.h>
#include <stdio.h>

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) { printf("ready\n"); fflush(stdout); }
    MPI_Finalize();
    return 0;
}
