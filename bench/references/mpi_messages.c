/* OpenMPI reference for allreduce-bench --collective {pingpong,sendrecv,alltoall}: the same patterns,
 * the same timing rule and the same columns, so the two tables line up size by size.
 *   pingpong: ranks 0 and 1, MPI_Send then MPI_Recv; time = round trip / 2, algbw = bytes / time.
 *   sendrecv: MPI_Sendrecv to rank+1 from rank-1; busbw = algbw.
 *   alltoall: MPI_Alltoall, `bytes` = each rank's send buffer; busbw = algbw (n-1)/n.
 *   allreduce: MPI_Allreduce SUM float, in place; busbw = algbw 2(n-1)/n (OpenMPI's algorithm is
 *   chosen by the caller through coll_tuned MCA parameters).
 * Timing (as ours): 5 warm-up calls; 5 trials of max(3, min(ITERS, 100 MiB / bytes) / 5) calls each
 * (ITERS from the environment, default 100: allreduce-bench's -n), after a barrier; a trial's time is
 * the slowest rank's mean; the median trial is reported.
 * usage: mpi_messages PATTERN SIZE...   (run under mpirun) */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int compare(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, n;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    if (argc < 3) { if (rank == 0) fprintf(stderr, "usage: %s pingpong|sendrecv|alltoall SIZE...\n", argv[0]); MPI_Abort(MPI_COMM_WORLD, 2); }
    const char *pattern = argv[1];
    int mode = !strcmp(pattern, "pingpong") ? 0 : !strcmp(pattern, "sendrecv") ? 1 : !strcmp(pattern, "alltoall") ? 2
             : !strcmp(pattern, "allreduce") ? 3 : -1;
    if (mode < 0) { if (rank == 0) fprintf(stderr, "unknown pattern %s\n", pattern); MPI_Abort(MPI_COMM_WORLD, 2); }
    const char *itersText = getenv("ITERS");
    long iters = itersText ? strtol(itersText, 0, 10) : 100;
    if (iters < 1) iters = 100;
    size_t largest = 4;
    for (int i = 2; i < argc; i++) { size_t s = strtoull(argv[i], 0, 10); if (s > largest) largest = s; }
    float *out = malloc(largest), *in = malloc(largest);
    for (size_t i = 0; i < largest / 4; i++) { out[i] = (float)(rank * 131 + i % 1000); in[i] = 0; }
    int right = (rank + 1) % n, left = (rank + n - 1) % n;
    if (rank == 0) printf("# %s, %d ranks, OpenMPI\n#%12s %12s %12s %8s %8s\n", pattern, n, "size(B)", "count", "time(us)", "algbw", "busbw");
    for (int si = 2; si < argc; si++) {
        size_t bytes = strtoull(argv[si], 0, 10);
        int count = (int)(bytes / 4);
        if (mode == 2) count = count / n * n;
        if (count == 0) continue;
        long scaled = (long)(100.0 * (1 << 20) / (double)bytes);
        int per = (int)((scaled < iters ? scaled : iters) / 5);
        if (per < 3) per = 3;
        double trials[5];
        for (int t = -1; t < 5; t++) {
            int calls = t < 0 ? 5 : per;
            MPI_Barrier(MPI_COMM_WORLD);
            double start = MPI_Wtime();
            for (int c = 0; c < calls; c++) {
                if (mode == 0) {
                    if (rank == 0) { MPI_Send(out, count, MPI_FLOAT, 1, 2, MPI_COMM_WORLD); MPI_Recv(in, count, MPI_FLOAT, 1, 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE); }
                    else if (rank == 1) { MPI_Recv(in, count, MPI_FLOAT, 0, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE); MPI_Send(in, count, MPI_FLOAT, 0, 3, MPI_COMM_WORLD); }
                } else if (mode == 1) {
                    MPI_Sendrecv(out, count, MPI_FLOAT, right, 1, in, count, MPI_FLOAT, left, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                } else if (mode == 2) {
                    MPI_Alltoall(out, count / n, MPI_FLOAT, in, count / n, MPI_FLOAT, MPI_COMM_WORLD);
                } else {
                    MPI_Allreduce(MPI_IN_PLACE, in, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
                }
            }
            double mine = (MPI_Wtime() - start) / calls, slowest;
            if (mode == 0) mine /= 2;
            MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
            if (t >= 0) trials[t] = slowest;
        }
        qsort(trials, 5, sizeof(double), compare);
        double seconds = trials[2], algbw = count * 4.0 / seconds / 1e9;
        double busbw = mode == 2 ? algbw * (n - 1) / n : mode == 3 ? algbw * 2 * (n - 1) / n : algbw;
        if (rank == 0) { printf(" %12d %12d %12.1f %8.2f %8.2f\n", count * 4, count, seconds * 1e6, algbw, busbw); fflush(stdout); }
    }
    free(out); free(in);
    MPI_Finalize();
    return 0;
}
