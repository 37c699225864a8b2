import Tensors

/// Character-level text as nanoGPT's shakespeare_char prepares it: the vocabulary is the sorted set of
/// characters (code points) in the text, the first 90% is train and the rest validation.
public struct CharText: Sendable {
    /// The vocabulary in code-point order (Python's sorted(set(text)) over characters = code points).
    public let vocabulary: [Unicode.Scalar]
    public let train: [Int32]
    public let validation: [Int32]
    let index: [UInt32: Int32]

    /// Works on Unicode scalars, as nanoGPT's Python strings do, one pass and no per-character objects
    /// (an Array of Character costs 16 bytes per character: 18 MB for Shakespeare).
    public init(text: String, trainFraction: Double = 0.9) {
        var seen = Set<UInt32>()
        for scalar in text.unicodeScalars { seen.insert(scalar.value) }
        vocabulary = seen.sorted().map { Unicode.Scalar($0)! }
        var index: [UInt32: Int32] = [:]
        for (i, c) in vocabulary.enumerated() { index[c.value] = Int32(i) }
        self.index = index
        var ids: [Int32] = []
        ids.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars { ids.append(index[scalar.value]!) }
        let cut = Int(Double(ids.count) * trainFraction)
        train = Array(ids[..<cut])
        validation = Array(ids[cut...])
    }

    public init(path: String) throws {
        let bytes = try readPossiblyGzippedFile(path)
        guard let text = String(validating: bytes, as: UTF8.self) else { throw DatasetError(path, "not valid UTF-8 text") }
        guard text.unicodeScalars.count > 2 else { throw DatasetError(path, "too short to train on (\(text.count) characters)") }
        self.init(text: text)
    }

    public func encode(_ text: String) -> [Int32]? {
        var out: [Int32] = []
        for c in text.unicodeScalars { guard let id = index[c.value] else { return nil }; out.append(id) }
        return out
    }

    public func decode(_ ids: [Int32]) -> String {
        var s = String.UnicodeScalarView()
        for id in ids { s.append(vocabulary[Int(id)]) }
        return String(s)
    }

    /// `batchSize` random windows of `time` tokens and their next-token targets, as nanoGPT's get_batch:
    /// start offsets uniform in 0..<(count - time).
    public static func sampleBatch(from data: [Int32], batchSize: Int, time: Int,
                                   using rng: inout SeededRandom) -> (tokens: [Int32], targets: [Int32]) {
        precondition(data.count > time, "split of \(data.count) tokens is shorter than block size \(time) + 1")
        var tokens = [Int32](), targets = [Int32]()
        tokens.reserveCapacity(batchSize * time); targets.reserveCapacity(batchSize * time)
        for _ in 0..<batchSize {
            let start = rng.nextInt(below: data.count - time)
            tokens.append(contentsOf: data[start..<(start + time)])
            targets.append(contentsOf: data[(start + 1)...(start + time)])
        }
        return (tokens, targets)
    }
}
