#if canImport(Glibc)
import Glibc
#endif

/// SplitMix64: a tiny, fast generator whose whole state is one UInt64, so checkpoints can store it and a
/// resumed run draws exactly the numbers the uninterrupted run would have.
public struct SeededRandom: RandomNumberGenerator, Sendable, Equatable {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 bits of precision.
    public mutating func nextUnitFloat() -> Float { Float(next() >> 40) * 0x1p-24 }

    /// Uniform integer in 0..<bound (multiply-shift; the bias is below 2^-32 for our bounds).
    public mutating func nextInt(below bound: Int) -> Int {
        precondition(bound > 0, "nextInt(below: \(bound))")
        return Int((UInt64(bound).multipliedFullWidth(by: next())).high)
    }

    /// Standard normal by Box-Muller (one value per call, two uniforms consumed).
    public mutating func nextNormal() -> Float {
        let u1 = Double(next() >> 11) * 0x1p-53, u2 = Double(next() >> 11) * 0x1p-53
        return Float((-2 * log(max(u1, 1e-300))).squareRoot() * cos(2 * Double.pi * u2))
    }

    /// A generator for a sub-stream (e.g. a rank or an epoch) that does not overlap this one in practice.
    public func derived(_ salt: UInt64) -> SeededRandom {
        var mixer = SeededRandom(seed: state ^ (salt &* 0xD1B5_4A32_D192_ED03))
        return SeededRandom(seed: mixer.next())
    }
}
