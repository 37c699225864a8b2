// How a tensor-parallel rank's parameters relate to the full (one-rank) model. Checkpoints, the
// initial parameters and the optimizer state always exist in the full layout (the standard
// single-file checkpoint, loadable at any tensor-parallel size or by nanoGPT); a rank keeps its shard.
//
//   replicated       every rank holds the whole tensor (LayerNorms, position embedding, row-parallel biases)
//   rows(blocks: k)  dim 0 cut into k equal blocks, each split across ranks: c_attn (k = 3: rank r holds
//                    its heads' rows of q, of k and of v), c_fc (k = 1); the token embedding (k = 1,
//                    rows padded to a multiple of the size: the padding rows stay zero)
//   columns          dim 1 split across ranks: the row-parallel c_proj weights

public enum ShardKind: Sendable, Equatable {
    case replicated
    case rows(blocks: Int)
    case columns
}

public struct ParameterShard: Sendable {
    public let local: Parameter
    public let fullShape: [Int]
    public let kind: ShardKind
    /// Offset in the full (one-rank) flat buffer.
    public let fullOffset: Int
    /// Replicated, but each rank computes only its rows' share of the gradient under sequence
    /// parallelism (LayerNorms, position embedding): summed over the group after backward.
    public let partialUnderSequenceParallel: Bool
    public var fullCount: Int { fullShape.reduce(1, *) }
}

public struct ParameterSharding: Sendable {
    public let rank: Int
    public let size: Int
    public let shards: [ParameterShard]
    public let fullCount: Int
    public let localCount: Int

    public init(rank: Int, size: Int, shards: [ParameterShard]) {
        self.rank = rank; self.size = size; self.shards = shards
        fullCount = shards.reduce(0) { $0 + $1.fullCount }
        localCount = shards.reduce(0) { $0 + $1.local.value.count }
    }

    /// Shards of `parameters` described tensor by tensor (kind, full shape, partial under sequence
    /// parallelism), placed in the full model in the same order.
    public init(rank: Int, size: Int, parameters: ParameterSet,
                describe: (Parameter) -> (kind: ShardKind, fullShape: [Int], partialUnderSequenceParallel: Bool)) {
        var fullOffset = 0
        let shards = parameters.parameters.map { p -> ParameterShard in
            let d = describe(p)
            defer { fullOffset += d.fullShape.reduce(1, *) }
            return ParameterShard(local: p, fullShape: d.fullShape, kind: d.kind, fullOffset: fullOffset,
                                  partialUnderSequenceParallel: d.partialUnderSequenceParallel)
        }
        self.init(rank: rank, size: size, shards: shards)
    }

    /// One rank holding the whole model: scatter and assemble copy.
    public static func unsharded(_ parameters: ParameterSet) -> ParameterSharding {
        ParameterSharding(rank: 0, size: 1, shards: parameters.parameters.map {
            ParameterShard(local: $0, fullShape: $0.shape, kind: .replicated, fullOffset: $0.offset, partialUnderSequenceParallel: false)
        })
    }

    /// Names, shapes and offsets of the full model (what checkpoints hold).
    public var fullParameters: [(name: String, shape: [Int], offset: Int)] { shards.map { ($0.local.name, $0.fullShape, $0.fullOffset) } }

    /// Where the local range `range` lies in the full layout, cut at tensor boundaries: (local piece,
    /// its full offset). Only replicated tensors and tensors split into whole rows (`rows(blocks: 1)`, no
    /// padding: expert parallelism's stacked experts) map to one full range each; nil for the others.
    public func fullPieces(ofLocal range: Range<Int>) -> [(local: Range<Int>, fullStart: Int)]? {
        var pieces: [(local: Range<Int>, fullStart: Int)] = []
        for shard in shards {
            let tensor = shard.local.offset..<(shard.local.offset + shard.local.value.count)
            let piece = tensor.clamped(to: range)
            guard !piece.isEmpty else { continue }
            let start: Int
            switch shard.kind {
            case .replicated: start = shard.fullOffset
            case .rows(blocks: 1) where shard.fullCount == size * tensor.count: start = shard.fullOffset + rank * tensor.count
            default: return nil
            }
            pieces.append((piece, start + piece.lowerBound - tensor.lowerBound))
        }
        return pieces
    }

    /// Local ranges whose values are the same on every rank of the group.
    public var replicatedRanges: [Range<Int>] { ranges { $0.kind == .replicated } }
    public var shardedRanges: [Range<Int>] { ranges { $0.kind != .replicated } }
    public var sequenceParallelPartialRanges: [Range<Int>] { ranges { $0.partialUnderSequenceParallel } }

    func ranges(_ include: (ParameterShard) -> Bool) -> [Range<Int>] {
        shards.filter(include).map { $0.local.offset..<($0.local.offset + $0.local.value.count) }
    }

    /// This rank's shard of a full-layout buffer (parameters or optimizer state) into a local-layout buffer.
    public func scatter(full: UnsafePointer<Float>, into local: UnsafeMutablePointer<Float>) {
        for shard in shards {
            copy(shard, rank: rank, full: full + shard.fullOffset, local: local + shard.local.offset, toFull: false)
        }
    }

    /// `gathered` holds every rank's local buffer, rank after rank (an allgather of localCount floats
    /// each); writes the full-layout buffer. Replicated tensors come from rank 0.
    public func assemble(gathered: UnsafePointer<Float>, into full: UnsafeMutablePointer<Float>) {
        for q in 0..<size { assemble(piece: gathered + q * localCount, rank: q, into: full) }
    }

    /// Rank `q`'s local buffer (localCount floats) into its places in the full layout: one rank's shard
    /// at a time, so an assembler needs one local buffer of room, not the whole group's. Replicated
    /// tensors are taken from rank 0 only.
    public func assemble(piece: UnsafePointer<Float>, rank q: Int, into full: UnsafeMutablePointer<Float>) {
        assemble(piece: piece, rank: q, skipping: []) { full + $0.fullOffset }
    }

    func assemble(piece: UnsafePointer<Float>, rank q: Int, skipping: Set<String>, at place: (ParameterShard) -> UnsafeMutablePointer<Float>) {
        for shard in shards where !skipping.contains(shard.local.name) && (shard.kind != .replicated || q == 0) {
            copy(shard, rank: q, full: place(shard), local: UnsafeMutablePointer(mutating: piece + shard.local.offset), toFull: true)
        }
    }

    /// Copies between rank `q`'s local tensor and its part of the full tensor, in either direction;
    /// local padding rows (past the full tensor) are zero when scattering.
    func copy(_ shard: ParameterShard, rank q: Int, full: UnsafePointer<Float>, local: UnsafeMutablePointer<Float>, toFull: Bool) {
        func move(fullAt: Int, localAt: Int, count: Int) {
            if toFull { UnsafeMutablePointer(mutating: full + fullAt).update(from: local + localAt, count: count) }
            else { (local + localAt).update(from: full + fullAt, count: count) }
        }
        let localShape = shard.local.shape
        switch shard.kind {
        case .replicated:
            move(fullAt: 0, localAt: 0, count: shard.fullCount)
        case .rows(let blocks):
            let width = localShape.dropFirst().reduce(1, *)
            let fullBlockRows = shard.fullShape[0] / blocks, localBlockRows = localShape[0] / blocks
            for block in 0..<blocks {
                for i in 0..<localBlockRows {
                    let fullRow = q * localBlockRows + i, localRow = block * localBlockRows + i
                    if fullRow < fullBlockRows {
                        move(fullAt: (block * fullBlockRows + fullRow) * width, localAt: localRow * width, count: width)
                    } else if !toFull {
                        (local + localRow * width).update(repeating: 0, count: width)
                    }
                }
            }
        case .columns:
            let rows = localShape[0], localColumns = localShape[1], fullColumns = shard.fullShape[1]
            for r in 0..<rows { move(fullAt: r * fullColumns + q * localColumns, localAt: r * localColumns, count: localColumns) }
        }
    }
}

extension ParameterSharding {
    /// This rank's shard of a buffer laid out as `whole` (a model holding at least these tensors, whole):
    /// each tensor is found by name. A pipeline stage takes its tensors out of the one-rank model so.
    public func scatter(whole buffer: UnsafePointer<Float>, layout whole: ParameterSet, into local: UnsafeMutablePointer<Float>) {
        for shard in shards {
            copy(shard, rank: rank, full: buffer + whole[shard.local.name].offset, local: local + shard.local.offset, toFull: false)
        }
    }

    /// The reverse of `scatter(whole:)` for rank `q`'s local buffer (one shard of room, as
    /// `assemble(piece:rank:into:)`): writes this set's tensors, whole, at their places in a buffer laid
    /// out as `whole`, leaving the rest alone. `skipping` names tensors not to write.
    public func assemble(piece: UnsafePointer<Float>, rank q: Int, layout whole: ParameterSet, into buffer: UnsafeMutablePointer<Float>,
                         skipping: Set<String> = []) {
        assemble(piece: piece, rank: q, skipping: skipping) { buffer + whole[$0.local.name].offset }
    }
}
