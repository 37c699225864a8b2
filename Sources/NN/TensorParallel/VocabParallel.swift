import FoundationEssentials
import Glibc
import Tensors

// Vocabulary-parallel embedding and cross-entropy (Megatron-LM): rank r holds the token rows
// [first, first + localRows) of the tied embedding/head matrix, so the logits of a row are spread over
// the ranks and are never gathered. The loss needs three per-row reductions over the group: the max
// (for a stable exp), the sum of exponentials and the target's logit (only its owner has it).

/// The token rows of the tied embedding/head one tensor-parallel rank holds: the vocabulary is padded to
/// a multiple of the group size and cut into equal blocks; `owned` of this rank's rows are real tokens.
public struct VocabularyShard: Sendable {
    /// Rows of the local embedding (padding included).
    public let rows: Int
    public let first: Int
    public let owned: Int
    public init(vocabulary: Int, rank: Int, size: Int) {
        rows = (vocabulary + size - 1) / size
        first = rank * rows
        owned = max(0, min(rows, vocabulary - first))
    }
}

/// out[i] = table[ids[i] - first] when this rank owns the token, else zeros (the group's sum is the lookup).
func vocabParallelEmbeddingForward(_ table: UnsafePointer<Float>, ids: [Int32], dim: Int, first: Int, localRows: Int,
                                   into out: UnsafeMutablePointer<Float>) {
    for (i, id) in ids.enumerated() {
        let row = Int(id) - first
        if row >= 0 && row < localRows { (out + i * dim).update(from: table + row * dim, count: dim) }
        else { (out + i * dim).update(repeating: 0, count: dim) }
    }
}

/// dtable[ids[i] - first] += dout[i] for the tokens this rank owns.
func vocabParallelEmbeddingBackward(_ dout: UnsafePointer<Float>, ids: [Int32], dim: Int, first: Int, localRows: Int,
                                    accumulatingInto dtable: UnsafeMutablePointer<Float>) {
    for (i, id) in ids.enumerated() {
        let row = Int(id) - first
        if row >= 0 && row < localRows { add(dtable + row * dim, dout + i * dim, into: dtable + row * dim, count: dim) }
    }
}

/// Softmax cross-entropy over logits split by class across the group: this rank holds classes
/// [first, first + classes) of every row. Caches the probabilities of its classes for backward.
final class VocabParallelCrossEntropy {
    var probabilities = Tensor(zeros: [0])
    /// [rows] maxima, then [rows] sums of exponentials, then [rows] target logits.
    var statistics: [Float] = []
    var targets: [Int32] = []
    var first = 0, classes = 0

    func forward(logits: UnsafePointer<Float>, targets: [Int32], first: Int, classes: Int,
                 communicator: TensorParallelCommunicator) throws -> Float {
        let rows = targets.count
        if probabilities.count != rows * classes { probabilities = Tensor(zeros: [rows, classes]) }
        self.targets = targets; self.first = first; self.classes = classes
        statistics = [Float](repeating: 0, count: 3 * rows)
        try statistics.withUnsafeMutableBufferPointer { s in
            for r in 0..<rows { s[r] = maximum(logits + r * classes, count: classes) }
            try communicator.allreduceMax(UnsafeMutableBufferPointer(rebasing: s[0..<rows]))
            for r in 0..<rows {
                let row = logits + r * classes
                s[rows + r] = exponentials(row, minus: s[r], into: probabilities.data + r * classes, count: classes)
                let t = Int(targets[r]) - first
                if t >= 0 && t < classes { s[2 * rows + r] = row[t] }
            }
            try communicator.allreduceSum(UnsafeMutableBufferPointer(rebasing: s[rows..<(3 * rows)]))
        }
        var total = 0.0
        for r in 0..<rows {
            let loss = (statistics[r] - statistics[2 * rows + r]) + logf(statistics[rows + r])
            total += Double(loss)
            scale(probabilities.data + r * classes, by: 1 / statistics[rows + r], count: classes)
        }
        return rows == 0 ? 0 : Float(total / Double(rows))
    }

    /// dlogits += (probs - onehot(target)) * lossScale / rows, over this rank's classes.
    func backward(lossScale: Float, into dlogits: UnsafeMutablePointer<Float>) {
        let rows = targets.count, scaleFactor = lossScale / Float(rows)
        for r in 0..<rows {
            axpy(scaleFactor, probabilities.data + r * classes, dlogits + r * classes, count: classes)
            let t = Int(targets[r]) - first
            if t >= 0 && t < classes { dlogits[r * classes + t] -= scaleFactor }
        }
    }
}
