import Rendezvous
import Transport

// Two-shot allreduce through the shared arena of a job on one host (SharedArena.swift). Per piece of
// up to one slot: every rank copies its piece into its own slot, all but its own segment; once all
// have, rank r reduces segment r from every other slot into its buffer and copies the result into its
// slot; once all have, every rank copies each other segment from the slot of the rank that reduced it.
// Two meetings per piece and about one copy in and one out, against
// 2 log2 P exchanges (each a copy into a ring and one out) for halving-doubling: with more ranks than
// cores each meeting may cost a context switch, and this cuts them. Each element is reduced on one
// rank only, so all ranks end bitwise identical.

public func twoShotAllreduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp, group: ProcessGroup,
                             arena: SharedArena) throws {
    let n = group.worldSize, rank = group.rank
    precondition(arena.ranks == n && arena.rank == rank, "the arena of \(arena.ranks) ranks serves another group than \(group.name)")
    let pieceFloats = arena.slotBytes / 4
    var start = 0
    while start < buffer.count {
        let count = min(pieceFloats, buffer.count - start)
        let slot = arena.beginPiece(bytes: 4 * count)
        func floats(_ r: Int) -> UnsafeMutablePointer<Float> { slot(r).assumingMemoryBound(to: Float.self) }
        let piece = buffer.baseAddress! + start
        let mine = segmentRange(count: count, parts: n, index: rank)
        // Our own segment is read by us alone: it stays in the buffer, the rest goes into the slot.
        arena.write(floats(rank), from: piece, bytes: 4 * mine.lowerBound)
        arena.write(floats(rank) + mine.upperBound, from: piece + mine.upperBound, bytes: 4 * (count - mine.upperBound))
        try arena.meet(connections: group.connections, policy: group.policy,
                       operation: "two-shot allreduce on \(group.name) (waiting for every rank's copy in)")
        let reduced = piece + mine.lowerBound
        for r in 0..<n where r != rank { op.combine(reduced, floats(r) + mine.lowerBound, count: mine.count) }
        op.finish(UnsafeMutableBufferPointer(start: reduced, count: mine.count), worldSize: n)
        arena.write(floats(rank) + mine.lowerBound, from: reduced, bytes: 4 * mine.count)
        try arena.meet(connections: group.connections, policy: group.policy,
                       operation: "two-shot allreduce on \(group.name) (waiting for every rank's reduction)")
        for r in 0..<n where r != rank {
            let segment = segmentRange(count: count, parts: n, index: r)
            (piece + segment.lowerBound).update(from: floats(r) + segment.lowerBound, count: segment.count)
        }
        arena.endPiece(bytes: 4 * count)
        start += count
    }
}

// Each shot alone, for ZeRO's and sequence parallelism's reduce-scatter and allgather on a group that
// has the arena. Pieces are strided so that every rank works in every piece: piece k holds the k-th
// chunk of every segment (segmentRange over the whole buffer), at s x chunk in a slot. One meeting per
// piece: a rank rewrites a half two pieces later, after the next piece's meeting, which every rank
// reaches only once done reading this one.

/// Chunk k (of `chunk` elements) of a segment: empty past its end.
private func stridedChunk(_ segment: Range<Int>, _ k: Int, _ chunk: Int) -> Range<Int> {
    let start = min(segment.lowerBound + k * chunk, segment.upperBound)
    return start..<min(segment.upperBound, start + chunk)
}

/// Reduce-scatter in place through the arena: on exit segment `group.rank` holds the reduction.
public func arenaReduceScatter(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp, group: ProcessGroup,
                               arena: SharedArena) throws {
    let n = group.worldSize, rank = group.rank
    let chunk = arena.slotBytes / 4 / n, base = buffer.baseAddress
    let longest = segmentRange(count: buffer.count, parts: n, index: 0).count // segment 0 is the longest
    var k = 0
    while k * chunk < longest {
        let slot = arena.beginPiece(bytes: 4 * chunk * n)
        func piece(_ s: Int) -> Range<Int> { stridedChunk(segmentRange(count: buffer.count, parts: n, index: s), k, chunk) }
        for s in 0..<n where s != rank {
            let p = piece(s)
            arena.write(slot(rank) + 4 * s * chunk, from: base! + p.lowerBound, bytes: 4 * p.count)
        }
        try arena.meet(connections: group.connections, policy: group.policy,
                       operation: "reduce-scatter through the arena on \(group.name) (waiting for every rank's copy in)")
        let mine = piece(rank)
        for r in 0..<n where r != rank {
            op.combine(base! + mine.lowerBound, (slot(r) + 4 * rank * chunk).assumingMemoryBound(to: Float.self), count: mine.count)
        }
        op.finish(UnsafeMutableBufferPointer(start: base! + mine.lowerBound, count: mine.count), worldSize: n)
        arena.endPiece(bytes: 4 * chunk * n)
        k += 1
    }
}

/// Allgather in place through the arena: on entry segment r holds rank r's part, on exit every rank
/// holds all of them.
public func arenaAllgather(_ buffer: UnsafeMutableBufferPointer<Float>, group: ProcessGroup, arena: SharedArena) throws {
    let n = group.worldSize, rank = group.rank
    let chunk = arena.slotBytes / 4, base = buffer.baseAddress
    let longest = segmentRange(count: buffer.count, parts: n, index: 0).count
    var k = 0
    while k * chunk < longest {
        let slot = arena.beginPiece(bytes: 4 * chunk)
        func piece(_ s: Int) -> Range<Int> { stridedChunk(segmentRange(count: buffer.count, parts: n, index: s), k, chunk) }
        let own = piece(rank)
        arena.write(slot(rank), from: base! + own.lowerBound, bytes: 4 * own.count)
        try arena.meet(connections: group.connections, policy: group.policy,
                       operation: "allgather through the arena on \(group.name) (waiting for every rank's part)")
        for r in 0..<n where r != rank {
            let p = piece(r)
            (base! + p.lowerBound).update(from: slot(r).assumingMemoryBound(to: Float.self), count: p.count)
        }
        arena.endPiece(bytes: 4 * chunk * n)
        k += 1
    }
}
