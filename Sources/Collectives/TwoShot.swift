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
