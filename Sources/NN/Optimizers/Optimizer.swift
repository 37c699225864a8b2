import Tensors

/// An optimizer updates a contiguous range of the flat parameter buffer from the same range of the
/// gradient buffer; with ZeRO-1 each rank owns one range. State buffers cover only that range.
public protocol Optimizer: AnyObject {
    /// Named state buffers (each the length of the range), for checkpoints.
    var state: [(name: String, buffer: FloatBuffer)] { get }
    var stepCount: Int { get set }
    func step(learningRate: Float)
}

/// The pieces of `range` that belong to each parameter, with the parameter's decay flag.
func segments(of parameters: ParameterSet, in range: Range<Int>) -> [(range: Range<Int>, decays: Bool)] {
    parameters.parameters.compactMap { p in
        let r = max(p.offset, range.lowerBound)..<min(p.offset + p.value.count, range.upperBound)
        return r.isEmpty ? nil : (r, p.decays)
    }
}
