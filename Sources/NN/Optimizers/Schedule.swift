import FoundationEssentials
import Glibc

/// Learning rate for step `iteration` (0-based), nanoGPT's get_lr: linear warmup to `peak` over
/// `warmup` steps, cosine decay to `minimum` at `decaySteps`, then constant.
public struct CosineSchedule: Codable, Sendable, Equatable {
    public var peak: Float
    public var minimum: Float
    public var warmup: Int
    public var decaySteps: Int
    public var enabled: Bool

    public init(peak: Float, minimum: Float, warmup: Int, decaySteps: Int, enabled: Bool = true) {
        self.peak = peak; self.minimum = minimum; self.warmup = warmup; self.decaySteps = decaySteps; self.enabled = enabled
    }

    public func learningRate(at iteration: Int) -> Float {
        if !enabled { return peak }
        if iteration < warmup { return peak * Float(iteration + 1) / Float(warmup + 1) }
        if iteration > decaySteps { return minimum }
        let ratio = Double(iteration - warmup) / Double(max(decaySteps - warmup, 1))
        let coefficient = 0.5 * (1 + cos(Double.pi * ratio))
        return minimum + Float(coefficient) * (peak - minimum)
    }
}
