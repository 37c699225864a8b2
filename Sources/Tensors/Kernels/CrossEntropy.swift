// Softmax cross-entropy with integer targets, fused: logits [rows, classes], targets [rows].
// Forward writes probs [rows, classes] (cached for backward) and per-row losses
//   loss_r = logsumexp(logits_r) - logits_r[target_r]   (stable for any logit magnitude),
// and returns their mean. Backward: dlogits_r += (probs_r - onehot(target_r)) * lossScale.

/// Returns the mean loss over rows.
@discardableResult
public func crossEntropyForward(_ logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>,
                                probs: UnsafeMutablePointer<Float>, losses: UnsafeMutablePointer<Float>,
                                rows: Int, classes: Int) -> Float {
    var total = 0.0
    for r in 0..<rows {
        let t = Int(targets[r])
        precondition(t >= 0 && t < classes, "target \(t) out of range 0..<\(classes) in row \(r)")
        let lr = logits + r * classes
        let (rowMax, sum) = softmaxRow(lr, into: probs + r * classes, count: classes)
        let loss = (rowMax - lr[t]) + logScalar(sum) // the difference first: exact when both are huge
        losses[r] = loss
        total += Double(loss)
    }
    return rows == 0 ? 0 : Float(total / Double(rows))
}

/// dlogits += (probs - onehot(target)) * lossScale; lossScale is d(total loss)/d(row loss), 1/rows for a mean.
public func crossEntropyBackward(probs: UnsafePointer<Float>, targets: UnsafePointer<Int32>, lossScale: Float,
                                 accumulatingInto dlogits: UnsafeMutablePointer<Float>, rows: Int, classes: Int) {
    for r in 0..<rows {
        let pr = probs + r * classes, dr = dlogits + r * classes
        axpy(lossScale, pr, dr, count: classes)
        dr[Int(targets[r])] -= lossScale
    }
}

#if canImport(Glibc)
import Glibc
@inline(__always) func logScalar(_ x: Float) -> Float { logf(x) }
#endif
