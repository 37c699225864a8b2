// Embedding lookup: out[i, :] = table[ids[i], :] for ids [count], table [vocab, dim].
// Backward scatters: dtable[ids[i], :] += dout[i, :] (repeated ids accumulate).

public func embeddingForward(_ table: UnsafePointer<Float>, ids: UnsafePointer<Int32>, count: Int, dim: Int,
                             vocabulary: Int, into out: UnsafeMutablePointer<Float>) {
    for i in 0..<count {
        let id = Int(ids[i])
        precondition(id >= 0 && id < vocabulary, "token id \(id) outside vocabulary of \(vocabulary)")
        (out + i * dim).update(from: table + id * dim, count: dim)
    }
}

public func embeddingBackward(_ dout: UnsafePointer<Float>, ids: UnsafePointer<Int32>, count: Int, dim: Int,
                              accumulatingInto dtable: UnsafeMutablePointer<Float>) {
    for i in 0..<count {
        let row = dtable + Int(ids[i]) * dim
        add(row, dout + i * dim, into: row, count: dim)
    }
}
