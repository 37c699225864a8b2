import Tensors

/// y[N, out] = x[N, in] W^T (+ b), with W stored [out, in] as PyTorch does.
/// Backward accumulates: dW += dy^T x, db += colsum(dy), dx += dy W.
public struct Linear: Sendable {
    public let weight: Parameter
    public let bias: Parameter?
    /// What the operation profile calls this layer ("mlp.c_fc linear", ...).
    let profileName: String
    public var inFeatures: Int { weight.shape[1] }
    public var outFeatures: Int { weight.shape[0] }

    public init(_ parameters: ParameterSet, _ name: String, hasBias: Bool) {
        weight = parameters[name + ".weight"]
        bias = hasBias ? parameters[name + ".bias"] : nil
        profileName = name.split(separator: ".").suffix(2).joined(separator: ".") + " linear"
    }

    public static func register(_ layout: inout ParameterSet.Layout, _ name: String, in inFeatures: Int, out: Int, bias: Bool) {
        layout.add(name + ".weight", [out, inFeatures])
        if bias { layout.add(name + ".bias", [out]) }
    }

    /// A row-parallel layer adds its bias only after its partial outputs are summed (`addingBias: false`).
    public func forward(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>, addingBias: Bool = true) {
        OperationProfile.measure(profileName + " forward", flops: 2 * Double(rows * inFeatures * outFeatures)) {
            gemm(.none, .transposed, m: rows, n: outFeatures, k: inFeatures, a: x, b: weight.value.data, c: y)
            if addingBias, let bias { addBias(bias.value.data, to: y, rows: rows, cols: outFeatures) }
        }
    }

    /// dx may be nil when the input needs no gradient (first layer). `weights: false` leaves dW and db
    /// to `weightBackward` (a split backward's input pass). `accumulate: false` overwrites dx.
    public func backward(_ x: UnsafePointer<Float>, dy: UnsafePointer<Float>, rows: Int, dx: UnsafeMutablePointer<Float>?,
                         weights: Bool = true, accumulate: Bool = true) {
        if weights { weightBackward(x, dy: dy, rows: rows) }
        if let dx { inputBackward(dy: dy, rows: rows, dx: dx, accumulate: accumulate) }
    }

    /// dx += dy W alone (needs no input: a split backward's input pass); dx = dy W with `accumulate: false`.
    /// `then` runs on each finished block of dx while the GEMM still has it in cache.
    public func inputBackward(dy: UnsafePointer<Float>, rows: Int, dx: UnsafeMutablePointer<Float>, accumulate: Bool = true,
                              then fused: (name: String, epilogue: GemmEpilogue)? = nil) {
        OperationProfile.measure(profileName + " backward dx" + (fused.map { " + " + $0.name } ?? ""),
                                 flops: 2 * Double(rows * inFeatures * outFeatures)) {
            gemm(.none, .none, m: rows, n: inFeatures, k: outFeatures, a: dy, b: weight.value.data, beta: accumulate ? 1 : 0, c: dx,
                 epilogue: fused?.epilogue)
        }
    }

    public func weightBackward(_ x: UnsafePointer<Float>, dy: UnsafePointer<Float>, rows: Int) {
        OperationProfile.measure(profileName + " backward dW", flops: 2 * Double(rows * inFeatures * outFeatures)) {
            gemm(.transposed, .none, m: outFeatures, n: inFeatures, k: rows, a: dy, b: x, beta: 1, c: weight.gradient.data)
            if let bias { addColumnSums(of: dy, rows: rows, cols: outFeatures, into: bias.gradient.data) }
        }
    }
}
