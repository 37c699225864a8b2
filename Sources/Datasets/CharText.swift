import Tensors

/// Character-level text as nanoGPT's shakespeare_char prepares it: the vocabulary is the sorted set of
/// characters (code points) in the text, the first 90% is train and the rest validation.
public struct CharText: Sendable {
    /// The vocabulary in code-point order (Python's sorted(set(text)) over characters = code points).
    public let vocabulary: [Unicode.Scalar]
    public let train: TokenIDs
    public let validation: TokenIDs
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
        let ids = TokenIDs(text.unicodeScalars.lazy.map { index[$0.value]! }, vocabulary: vocabulary.count)
        let cut = Int(Double(ids.count) * trainFraction)
        train = ids.prefix(cut)
        validation = ids.suffix(from: cut)
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
    public static func sampleBatch(from data: TokenIDs, batchSize: Int, time: Int,
                                   using rng: inout SeededRandom) -> (tokens: [Int32], targets: [Int32]) {
        precondition(data.count > time, "split of \(data.count) tokens is shorter than block size \(time) + 1")
        var tokens = [Int32](), targets = [Int32]()
        tokens.reserveCapacity(batchSize * time); targets.reserveCapacity(batchSize * time)
        for _ in 0..<batchSize {
            let start = rng.nextInt(below: data.count - time)
            data.append(start..<(start + time), to: &tokens)
            data.append((start + 1)..<(start + time + 1), to: &targets)
        }
        return (tokens, targets)
    }
}

/// A split's token ids, one byte each when the vocabulary has at most 256 symbols (Shakespeare's 65:
/// 1 MB instead of 4.4 MB resident for the run's whole life), else four.
public struct TokenIDs: Sendable {
    let bytes: [UInt8]
    let wide: [Int32]
    public var count: Int { wide.isEmpty ? bytes.count : wide.count }

    init<S: Sequence>(_ ids: S, vocabulary: Int) where S.Element == Int32 {
        if vocabulary <= 256 { bytes = ids.map { UInt8(truncatingIfNeeded: $0) }; wide = [] }
        else { bytes = []; wide = Array(ids) }
    }

    init(bytes: [UInt8], wide: [Int32]) { self.bytes = bytes; self.wide = wide }

    func prefix(_ n: Int) -> TokenIDs { TokenIDs(bytes: Array(bytes.prefix(n)), wide: Array(wide.prefix(n))) }
    func suffix(from i: Int) -> TokenIDs {
        TokenIDs(bytes: bytes.isEmpty ? [] : Array(bytes[i...]), wide: wide.isEmpty ? [] : Array(wide[i...]))
    }

    /// Appends the ids in `range`.
    public func append(_ range: Range<Int>, to out: inout [Int32]) {
        if wide.isEmpty { out.append(contentsOf: bytes[range].lazy.map { Int32($0) }) }
        else { out.append(contentsOf: wide[range]) }
    }
}
