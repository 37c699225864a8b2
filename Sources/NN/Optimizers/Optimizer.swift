import Tensors

/// An optimizer updates some ranges of the flat parameter buffer from the same ranges of the gradient
/// buffer: all of it normally; with ZeRO-1 the pieces this rank owns. State buffers hold only those
/// ranges, packed one after another in order.
public protocol Optimizer: AnyObject {
    /// Named state buffers (each as long as the owned ranges together), for checkpoints.
    var state: [(name: String, buffer: FloatBuffer)] { get }
    var stepCount: Int { get set }
    func step(learningRate: Float)
    /// The ranges of the parameter buffer this optimizer owns, in state order.
    var ranges: [Range<Int>] { get }
}

extension Optimizer {
    /// Elements of state per state buffer (the owned ranges together).
    public var ownedCount: Int { ranges.reduce(0) { $0 + $1.count } }
}

/// Whole buffer when no ranges are given; empty ranges dropped.
func ownedRanges(_ ranges: [Range<Int>]?, count: Int) -> [Range<Int>] {
    (ranges ?? [0..<count]).filter { !$0.isEmpty }
}

/// The pieces of `range` that belong to each parameter, with the parameter's decay flag.
func segments(of parameters: ParameterSet, in range: Range<Int>) -> [(range: Range<Int>, decays: Bool)] {
    parameters.parameters.compactMap { p in
        let low = max(p.offset, range.lowerBound), high = min(p.offset + p.value.count, range.upperBound)
        return low < high ? (low..<high, p.decays) : nil
    }
}
