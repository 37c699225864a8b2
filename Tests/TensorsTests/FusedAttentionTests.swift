import Tensors
import XCTest

/// The fused causal attention against the GEMM formulation it replaces, on head sizes 16, 32 and 64 and
/// sequence lengths around the 6-row blocks, 16-key tiles and 64-key padding: output and all three input
/// gradients (the fused backward recomputes the probabilities from the rows' softmax statistics its forward
/// kept). Both compute the same sums in another
/// order, so they agree to float32 rounding (1e-5 relative to each tensor's largest entry); a wrong index
/// or mask is off by O(1).
final class FusedAttentionTests: XCTestCase {
    func testFusedEqualsGEMMAttention() {
        for (C, NH) in [(32, 2), (64, 2), (128, 2), (128, 4)] {
            XCTAssertTrue(fusedAttentionApplies(headSize: C / NH))
            for T in [1, 3, 5, 6, 7, 12, 16, 17, 63, 64, 65, 70] {
                let B = 2
                var rng = SeededRandom(seed: UInt64(C * 1000 + T))
                let qkv = Tensor(zeros: [B * T * 3 * C]), dout = Tensor(zeros: [B * T * C])
                for i in 0..<qkv.count { qkv[i] = rng.nextNormal() }
                for i in 0..<dout.count { dout[i] = rng.nextNormal() }
                let scratch = Tensor(zeros: [attentionScratchCount(time: T, channels: C, heads: NH)])
                // The fused kernels keep two floats a row, nothing T×T: a NaN buffer past them stays untouched.
                let kept = attentionProbabilityCount(batch: B, time: T, channels: C, heads: NH)
                XCTAssertEqual(kept, B * NH * 2 * T)
                let out = Tensor(zeros: [B * T * C]), att = Tensor(zeros: [kept + 2 * T])
                for i in 0..<att.count { att[i] = .nan }
                let refOut = Tensor(zeros: [B * T * C]), refAtt = Tensor(zeros: [B * NH * T * T])
                attentionForward(qkv: qkv.data, out: out.data, att: att.data, scratch: scratch.data, batch: B, time: T, channels: C, heads: NH)
                attentionForwardUnfused(qkv: qkv.data, out: refOut.data, att: refAtt.data, batch: B, time: T, channels: C, heads: NH)
                let dqkv = Tensor(zeros: [B * T * 3 * C]), refDqkv = Tensor(zeros: [B * T * 3 * C])
                // Both overwrite: NaNs there before must not leak.
                for i in 0..<dqkv.count { dqkv[i] = .nan; refDqkv[i] = .nan }
                attentionBackward(dout: dout.data, qkv: qkv.data, att: att.data, dqkv: dqkv.data, scratch: scratch.data,
                                  batch: B, time: T, channels: C, heads: NH)
                let refScratch = Tensor(zeros: [T * T])
                attentionBackwardUnfused(dout: dout.data, qkv: qkv.data, att: refAtt.data, dqkv: refDqkv.data, scratch: refScratch.data,
                                         batch: B, time: T, channels: C, heads: NH)
                for (name, a, b) in [("output", out, refOut), ("dqkv", dqkv, refDqkv)] {
                    // max() passes a NaN over: counted here.
                    XCTAssertTrue((0..<a.count).allSatisfy { a[$0].isFinite && b[$0].isFinite }, "\(name) C \(C) NH \(NH) T \(T): NaN")
                    let scale = (0..<b.count).reduce(Float(0)) { max($0, abs(b[$1])) }
                    let worst = (0..<b.count).reduce(Float(0)) { max($0, abs(a[$1] - b[$1])) }
                    XCTAssertLessThanOrEqual(worst, 1e-5 * max(scale, 1), "\(name) C \(C) NH \(NH) T \(T)")
                }
                XCTAssertTrue((0..<kept).allSatisfy { att[$0].isFinite }, "a kept statistic missing")
                XCTAssertTrue((kept..<att.count).allSatisfy { att[$0].isNaN }, "the fused kernels wrote past what they keep")
            }
        }
    }
}
