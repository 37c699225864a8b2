import Tensors

/// LayerNorm over the last dimension with a weight and an optional bias (nanoGPT's bias=False has none).
/// Caches mean and rstd per row for backward.
public final class LayerNormLayer {
    public let weight: Parameter
    public let bias: Parameter?
    public let features: Int
    var mean = Tensor(zeros: [0]), rstd = Tensor(zeros: [0])

    public init(_ parameters: ParameterSet, _ name: String, hasBias: Bool) {
        weight = parameters[name + ".weight"]
        bias = hasBias ? parameters[name + ".bias"] : nil
        features = weight.shape[0]
    }

    public static func register(_ layout: inout ParameterSet.Layout, _ name: String, features: Int, bias: Bool) {
        layout.add(name + ".weight", [features])
        if bias { layout.add(name + ".bias", [features]) }
    }

    /// Weight 1, bias 0, as PyTorch initializes LayerNorm.
    public func reset() {
        weight.value.fill(1)
        bias?.value.fill(0)
    }

    /// Floats cached for backward (mean and rstd per row).
    var cachedCount: Int { mean.count + rstd.count }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>) {
        if mean.count != rows { mean = Tensor(zeros: [rows]); rstd = Tensor(zeros: [rows]) }
        OperationProfile.measure("layernorm forward") {
            layerNormForward(x, weight: weight.value.data, bias: bias?.value.data, into: y,
                             mean: mean.data, rstd: rstd.data, rows: rows, cols: features)
        }
    }

    /// The output `forward` gave for the same x, recomputed in backward instead of kept (mean and 1/std
    /// are recomputed too, to the same bits).
    public func recompute(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>) {
        OperationProfile.measure("layernorm forward (recomputed)") {
            layerNormForward(x, weight: weight.value.data, bias: bias?.value.data, into: y,
                             mean: mean.data, rstd: rstd.data, rows: rows, cols: features)
        }
    }

    /// Accumulates into dx, and into the weight and bias gradients unless `weights` is false (a split
    /// backward's input pass; `weightBackward` does them later).
    public func backward(_ x: UnsafePointer<Float>, dy: UnsafePointer<Float>, rows: Int, dx: UnsafeMutablePointer<Float>,
                         weights: Bool = true) {
        OperationProfile.measure("layernorm backward") {
            layerNormBackward(x, weight: weight.value.data, mean: mean.data, rstd: rstd.data, dy: dy, dx: dx,
                              dweight: weights ? weight.gradient.data : nil, dbias: weights ? bias?.gradient.data : nil, rows: rows, cols: features)
        }
    }

    public func weightBackward(_ x: UnsafePointer<Float>, dy: UnsafePointer<Float>, rows: Int) {
        layerNormWeightGradients(x, mean: mean.data, rstd: rstd.data, dy: dy, dweight: weight.gradient.data,
                                 dbias: bias?.gradient.data, rows: rows, cols: features)
    }
}
