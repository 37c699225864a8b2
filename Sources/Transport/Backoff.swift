#if canImport(Glibc)
import Glibc
#endif

/// A pause between retries that grows after each wait, up to a cap: a retry at once would spin a core,
/// a long first pause would slow the common case where the other side is a few milliseconds late.
public struct Backoff: Sendable {
    /// Microseconds the next `wait` sleeps.
    public private(set) var pause: useconds_t
    private let first: useconds_t
    private let growth: Double
    private let cap: useconds_t

    /// Pauses of `first` microseconds, times `growth` after each wait, never more than `cap`.
    public init(first: useconds_t, growth: Double, cap: useconds_t) {
        precondition(first > 0 && growth >= 1 && cap >= first, "Backoff: first \(first), growth \(growth), cap \(cap)")
        self.first = first; self.growth = growth; self.cap = cap
        pause = first
    }

    /// Sleeps the current pause, then grows it.
    public mutating func wait() {
        usleep(pause)
        pause = min(useconds_t(Double(pause) * growth), cap)
    }

    /// Back to the first pause (the thing retried succeeded).
    public mutating func reset() { pause = first }
}
