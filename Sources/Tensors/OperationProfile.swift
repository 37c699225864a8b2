#if canImport(Glibc)
import Glibc
#endif

/// Wall time and FLOPs per kind of operation, collected while switched on (kernels-bench profiles one
/// GPT step with it, so the next gap is visible). Off, a measured call costs one load and a branch.
/// Not thread-safe: switch it on only around single-threaded compute.
public enum OperationProfile {
    nonisolated(unsafe) static var enabled = false
    nonisolated(unsafe) static var totals: [String: (seconds: Double, calls: Int, flops: Double)] = [:]

    /// Runs `body`, adding its time (and `flops`) to `name` when profiling is on.
    @inline(__always)
    public static func measure<T>(_ name: String, flops: Double = 0, _ body: () throws -> T) rethrows -> T {
        guard enabled else { return try body() }
        let start = now()
        let result = try body()
        let entry = totals[name] ?? (0, 0, 0)
        totals[name] = (entry.seconds + now() - start, entry.calls + 1, entry.flops + flops)
        return result
    }

    public static func start() {
        totals = [:]
        enabled = true
    }

    /// Stops and returns what was collected, the most expensive first.
    public static func stop() -> [(name: String, seconds: Double, calls: Int, flops: Double)] {
        enabled = false
        return totals.map { ($0.key, $0.value.seconds, $0.value.calls, $0.value.flops) }.sorted { $0.seconds > $1.seconds }
    }

    static func now() -> Double {
        var clock = timespec()
        clock_gettime(CLOCK_MONOTONIC, &clock)
        return Double(clock.tv_sec) + Double(clock.tv_nsec) * 1e-9
    }
}
