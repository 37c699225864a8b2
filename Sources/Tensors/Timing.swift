#if canImport(Glibc)
import Glibc
#endif

/// Seconds on the monotonic clock (CLOCK_MONOTONIC): for durations only.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// Times `body` as the SGEMM peers do: two warm-up calls, a calibration to ~`target` seconds per
/// trial, then `trials` trials. Returns (best, median) seconds per call.
public func measure(trials: Int = 5, target: Double = 0.3, _ body: () -> Void) -> (best: Double, median: Double) {
    body(); body()
    let t0 = monotonicSeconds(); body()
    let once = max(monotonicSeconds() - t0, 1e-7)
    let iterations = max(3, Int(target / once))
    var times: [Double] = []
    for _ in 0..<trials {
        let start = monotonicSeconds()
        for _ in 0..<iterations { body() }
        times.append((monotonicSeconds() - start) / Double(iterations))
    }
    times.sort()
    return (times[0], times[times.count / 2])
}
