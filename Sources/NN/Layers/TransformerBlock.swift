import Tensors

/// Pre-LN transformer block (GPT-2 / nanoGPT):
///   x1 = x + attn(ln1(x));  y = x1 + mlp(ln2(x1)),  mlp = c_proj(gelu(c_fc(.)))  with 4x expansion.
/// Caches ln1 out, x1, ln2 out and fc out (GELU input), [N, C] or [N, 4C]; the GELU output is recomputed
/// in backward (one cheap vector pass instead of 4NC floats kept per block), as llm.c's recompute option.
public final class TransformerBlock {
    public let ln1: LayerNormLayer, attention: CausalSelfAttention
    public let ln2: LayerNormLayer, fc: Linear, projection: Linear
    let channels: Int
    var ln1Out = Tensor(zeros: [0]), x1 = Tensor(zeros: [0]), ln2Out = Tensor(zeros: [0])
    var fcOut = Tensor(zeros: [0])
    let workspace: Workspace

    public init(_ parameters: ParameterSet, _ name: String, heads: Int, hasBias: Bool, workspace: Workspace = Workspace()) {
        self.workspace = workspace
        ln1 = LayerNormLayer(parameters, name + ".ln_1", hasBias: hasBias)
        attention = CausalSelfAttention(parameters, name + ".attn", heads: heads, hasBias: hasBias, workspace: workspace)
        ln2 = LayerNormLayer(parameters, name + ".ln_2", hasBias: hasBias)
        fc = Linear(parameters, name + ".mlp.c_fc", hasBias: hasBias)
        projection = Linear(parameters, name + ".mlp.c_proj", hasBias: hasBias)
        channels = ln1.features
    }

    public static func register(_ layout: inout ParameterSet.Layout, _ name: String, channels: Int, bias: Bool) {
        LayerNormLayer.register(&layout, name + ".ln_1", features: channels, bias: bias)
        CausalSelfAttention.register(&layout, name + ".attn", channels: channels, bias: bias)
        LayerNormLayer.register(&layout, name + ".ln_2", features: channels, bias: bias)
        Linear.register(&layout, name + ".mlp.c_fc", in: channels, out: 4 * channels, bias: bias)
        Linear.register(&layout, name + ".mlp.c_proj", in: 4 * channels, out: channels, bias: bias)
    }

    func prepare(rows: Int) {
        if x1.count == rows * channels { return }
        let c = channels
        ln1Out = Tensor(zeros: [rows, c]); x1 = Tensor(zeros: [rows, c]); ln2Out = Tensor(zeros: [rows, c])
        fcOut = Tensor(zeros: [rows, 4 * c])
    }

    public func forward(_ x: UnsafePointer<Float>, batch B: Int, time T: Int, into y: UnsafeMutablePointer<Float>) {
        let rows = B * T, n = rows * channels
        prepare(rows: rows)
        ln1.forward(x, rows: rows, into: ln1Out.data)
        attention.forward(ln1Out.data, batch: B, time: T, into: x1.data)
        add(x1.data, x, into: x1.data, count: n)
        ln2.forward(x1.data, rows: rows, into: ln2Out.data)
        fc.forward(ln2Out.data, rows: rows, into: fcOut.data)
        let geluOut = workspace.floats(.blockActivation, rows * 4 * channels)
        geluForward(fcOut.data, into: geluOut, count: rows * 4 * channels)
        projection.forward(geluOut, rows: rows, into: y)
        add(y, x1.data, into: y, count: n)
    }

    /// dy is the gradient of the block output; accumulates into dx.
    public func backward(_ x: UnsafePointer<Float>, dy: UnsafePointer<Float>, batch B: Int, time T: Int,
                         dx: UnsafeMutablePointer<Float>) {
        let rows = B * T, n = rows * channels
        let hidden = rows * 4 * channels
        let dx1 = workspace.floats(.blockResidualGradient, n), dLn = workspace.floats(.blockNormGradient, n)
        let dGelu = workspace.floats(.blockActivationGradient, hidden), dFc = workspace.floats(.blockHiddenGradient, hidden)
        // Residual: dx1 = dy + d(mlp branch)/dx1.
        dx1.update(from: dy, count: n)
        dGelu.update(repeating: 0, count: hidden); dFc.update(repeating: 0, count: hidden); dLn.update(repeating: 0, count: n)
        let geluOut = workspace.floats(.blockActivation, hidden)
        geluForward(fcOut.data, into: geluOut, count: hidden)
        projection.backward(geluOut, dy: dy, rows: rows, dx: dGelu)
        geluBackward(fcOut.data, dGelu, accumulatingInto: dFc, count: hidden)
        fc.backward(ln2Out.data, dy: dFc, rows: rows, dx: dLn)
        ln2.backward(x1.data, dy: dLn, rows: rows, dx: dx1)
        // dx = dx1 + d(attn branch)/dx.
        add(dx, dx1, into: dx, count: n)
        dLn.update(repeating: 0, count: n)
        attention.backward(ln1Out.data, dy: dx1, batch: B, time: T, dx: dLn)
        ln1.backward(x, dy: dLn, rows: rows, dx: dx)
    }
}
