#if canImport(Glibc)
import Glibc
#endif

/// A point on the monotonic clock by which something must happen.
public struct Deadline: Sendable {
    public let at: Double
    public let seconds: Double

    public init(seconds: Double) {
        self.seconds = seconds
        at = Deadline.now() + seconds
    }

    /// `seconds` after `start` (a time read earlier with `now()`).
    public init(seconds: Double, from start: Double) {
        self.seconds = seconds
        at = start + seconds
    }

    public static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    public var remaining: Double { at - Deadline.now() }
    public var hasPassed: Bool { remaining <= 0 }

    /// Milliseconds for poll(2), rounded up, at least 0.
    public var pollMilliseconds: Int32 { Int32(max(0, min(remaining * 1000 + 0.999, Double(Int32.max)))) }
}
