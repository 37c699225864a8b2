// Causal multi-head self-attention core (after the fused QKV projection, before the output projection).
//   qkv  [B, T, 3C]  rows hold q (C) | k (C) | v (C); head h uses columns h*hs ..< (h+1)*hs of each
//   out  [B, T, C]   out[b,t,h] = sum_{s<=t} att[b,h,t,s] v[b,s,h]
//   att  [B, NH, T, T] cached: softmax over s <= t of (q_t . k_s) / sqrt(hs), zero above the diagonal
// Each (b, h) is three small GEMMs over strided views of qkv (leading dimension 3C), so the heads are
// never copied out. Backward, with P = att and dS the gradient of the pre-softmax scores:
//   dV = P^T dOut,  dP = dOut V^T,  dS = P * (dP - rowsum(dP * P)) / sqrt(hs),  dQ = dS K,  dK = dS^T Q

//
// Head sizes that are multiples of 16 run the fused kernels (FusedAttention.swift); these GEMM forms
// serve the others and are the reference the fused ones are tested against.

/// Scratch floats `attentionForward` and `attentionBackward` need.
public func attentionScratchCount(time T: Int, channels C: Int, heads NH: Int) -> Int {
    max(T * T, fusedAttentionScratchCount(time: T, headSize: C / NH))
}

/// Floats of `att`, what forward keeps for backward: the probabilities, B·NH·T·T, for the GEMM forms; for
/// the fused kernels, which recompute them, each row's softmax shift and inverse sum, B·NH·2T.
public func attentionProbabilityCount(batch B: Int, time T: Int, channels C: Int, heads NH: Int) -> Int {
    fusedAttentionApplies(headSize: C / NH) ? B * NH * 2 * T : B * NH * T * T
}

/// `att` holds attentionProbabilityCount floats.
public func attentionForward(qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, att: UnsafeMutablePointer<Float>,
                             scratch: UnsafeMutablePointer<Float>, batch B: Int, time T: Int, channels C: Int, heads NH: Int) {
    precondition(C % NH == 0, "channels \(C) not divisible by heads \(NH)")
    if fusedAttentionApplies(headSize: C / NH) {
        return fusedAttentionForward(qkv: qkv, out: out, statistics: att, scratch: scratch, batch: B, time: T, channels: C, heads: NH)
    }
    attentionForwardUnfused(qkv: qkv, out: out, att: att, batch: B, time: T, channels: C, heads: NH)
}

/// Overwrites dqkv; `scratch` holds attentionScratchCount floats, `att` what forward left there.
public func attentionBackward(dout: UnsafePointer<Float>, qkv: UnsafePointer<Float>, att: UnsafePointer<Float>,
                              dqkv: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
                              batch B: Int, time T: Int, channels C: Int, heads NH: Int) {
    if fusedAttentionApplies(headSize: C / NH) {
        return fusedAttentionBackward(dout: dout, qkv: qkv, statistics: att, dqkv: dqkv, scratch: scratch, batch: B, time: T,
                                      channels: C, heads: NH)
    }
    attentionBackwardUnfused(dout: dout, qkv: qkv, att: att, dqkv: dqkv, scratch: scratch, batch: B, time: T, channels: C, heads: NH)
}

/// Row t of dS from row t of P and of dP (in place in d): P (dP − ⟨dP, P⟩) / √hs over s ≤ t, zero
/// from t + 1 to `width`.
@inline(__always)
func causalScoreGradient(_ p: UnsafePointer<Float>, _ d: UnsafeMutablePointer<Float>, row t: Int, scale: Float, width: Int) {
    let dot = dotProduct(p, d, count: t + 1)
    for s in 0...t { d[s] = p[s] * (d[s] - dot) * scale }
    (d + t + 1).update(repeating: 0, count: width - t - 1)
}

/// Where head h of sequence b lives, in elements: its query columns in qkv [B·T, 3C] (keys and values
/// follow at +C and +2C, rows 3C apart), its T×T probabilities in att [B, NH, T, T] (the GEMM forms) or
/// its rows' softmax statistics in [B, NH, T, 2] (the fused kernels), its output (or output gradient)
/// columns in [B·T, C].
struct AttentionHead {
    let qkv: Int, att: Int, statistics: Int, out: Int
    init(sequence b: Int, head h: Int, time T: Int, channels C: Int, heads NH: Int) {
        let hs = C / NH
        qkv = b * T * 3 * C + h * hs; att = (b * NH + h) * T * T; statistics = (b * NH + h) * 2 * T; out = b * T * C + h * hs
    }
}

/// Three GEMMs per (batch, head) over the whole T×T square.
public func attentionForwardUnfused(qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                                    att: UnsafeMutablePointer<Float>, batch B: Int, time T: Int, channels C: Int, heads NH: Int) {
    let hs = C / NH, ld = 3 * C
    let scale = 1 / Float(hs).squareRoot()
    for b in 0..<B {
        for h in 0..<NH {
            let head = AttentionHead(sequence: b, head: h, time: T, channels: C, heads: NH)
            let q = qkv + head.qkv, k = q + C, v = q + 2 * C, p = att + head.att
            gemm(.none, .transposed, m: T, n: T, k: hs, alpha: scale, a: q, lda: ld, b: k, ldb: ld,
                 beta: 0, c: p, ldc: T)
            for t in 0..<T {
                let row = p + t * T
                softmaxRow(row, into: row, count: t + 1)
                (row + t + 1).update(repeating: 0, count: T - t - 1)
            }
            gemm(.none, .none, m: T, n: hs, k: T, a: p, lda: T, b: v, ldb: ld,
                 beta: 0, c: out + head.out, ldc: C)
        }
    }
}

/// Overwrites dqkv; `scratch` holds T*T floats (dP, then dS).
public func attentionBackwardUnfused(dout: UnsafePointer<Float>, qkv: UnsafePointer<Float>, att: UnsafePointer<Float>,
                                     dqkv: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
                                     batch B: Int, time T: Int, channels C: Int, heads NH: Int) {
    let hs = C / NH, ld = 3 * C
    let scale = 1 / Float(hs).squareRoot()
    for b in 0..<B {
        for h in 0..<NH {
            let head = AttentionHead(sequence: b, head: h, time: T, channels: C, heads: NH)
            let q = qkv + head.qkv, k = q + C, v = q + 2 * C
            let dq = dqkv + head.qkv, dk = dq + C, dv = dq + 2 * C
            let p = att + head.att, dO = dout + head.out
            gemm(.transposed, .none, m: T, n: hs, k: T, a: p, lda: T, b: dO, ldb: C, beta: 0, c: dv, ldc: ld)
            gemm(.none, .transposed, m: T, n: T, k: hs, a: dO, lda: C, b: v, ldb: ld, beta: 0, c: scratch, ldc: T)
            for t in 0..<T { causalScoreGradient(p + t * T, scratch + t * T, row: t, scale: scale, width: T) }
            gemm(.none, .none, m: T, n: hs, k: T, a: scratch, lda: T, b: k, ldb: ld, beta: 0, c: dq, ldc: ld)
            gemm(.transposed, .none, m: T, n: hs, k: T, a: scratch, lda: T, b: q, ldb: ld, beta: 0, c: dk, ldc: ld)
        }
    }
}
