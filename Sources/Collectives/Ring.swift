import Rendezvous
import Transport

// Ring allreduce (bandwidth-optimal; what NCCL and gloo use for large messages).
// The vector is cut into N segments. In the reduce-scatter phase each rank, N-1 times, sends one
// segment to its right neighbour while receiving another from its left neighbour and adding it into
// its own copy; afterwards rank r holds the complete reduction of segment r. In the allgather phase
// the finished segments travel around the ring the same way, overwriting instead of adding. Every rank
// sends and receives 2(N-1)/N of the vector, and each step sends and receives at the same time, in
// chunks, adding each chunk as it lands. The allreduce starts the allgather inside the reduce-scatter's
// last step, piece by piece, so a finished piece leaves while still in cache. Each element is reduced on
// one rank only and then copied, so all ranks end bitwise identical.

/// Elements a ring reduce-scatter step sends and receives per exchange (256 KiB of float32).
public let ringPieceElements = 64 << 10

/// In-place ring reduce-scatter: afterwards segment `rank` (segmentRange(count, worldSize, rank)) of
/// `buffer` holds the reduction; other segments hold partial sums.
public func ringReduceScatter(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp, group: ProcessGroup,
                              tag: UInt32? = nil) throws {
    try ringReduceScatter(buffer, op: op, group: group, tag: tag ?? group.nextTag(), startingAllgather: false)
}

/// The reduce-scatter; with `startingAllgather`, its last step also runs the allgather's first, piece by
/// piece: each piece of this rank's segment goes on to the right as soon as it is reduced, still in
/// cache, while the left neighbour's finished piece lands (as a double binary tree's chunks do on 2
/// ranks). Every rank interleaves the same messages on each connection, so they arrive in order.
func ringReduceScatter(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp, group: ProcessGroup, tag: UInt32,
                       startingAllgather: Bool) throws {
    let n = group.worldSize, rank = group.rank
    let own = segmentRange(count: buffer.count, parts: n, index: rank)
    guard n > 1 else {
        op.finish(UnsafeMutableBufferPointer(rebasing: buffer[own]), worldSize: n)
        return
    }
    let right = (rank + 1) % n, left = (rank + n - 1) % n
    let maxSegment = segmentRange(count: buffer.count, parts: n, index: 0).count
    // A step travels in pieces of at most ringPieceElements through one cache-sized scratch: a
    // segment-sized scratch (8 MiB at 16 MiB on 2 ranks) was written and read back from memory.
    let piece = min(max(maxSegment, 1), ringPieceElements)
    let scratch = group.scratchFloats(piece)
    let leftOwn = segmentRange(count: buffer.count, parts: n, index: left)
    for step in 0..<(n - 1) {
        let (sendIndex, receiveIndex) = RingSchedule.reduceScatter(rank: rank, worldSize: n, step: step)
        let send = segmentRange(count: buffer.count, parts: n, index: sendIndex)
        let receive = segmentRange(count: buffer.count, parts: n, index: receiveIndex)
        let fused = startingAllgather && step == n - 2
        for offset in stride(from: 0, to: max(send.count, receive.count, fused ? leftOwn.count : 0, 1), by: piece) {
            // This piece of a segment (empty once the shorter segment has run out).
            func part(_ segment: Range<Int>) -> Range<Int> {
                (segment.lowerBound + min(offset, segment.count))..<(segment.lowerBound + min(offset + piece, segment.count))
            }
            let sending = part(send), receiving = part(receive)
            let destination = buffer.baseAddress! + receiving.lowerBound
            try exchange(group, tag: tag, sendTo: sending.isEmpty ? nil : right, sendBytes: bytesOf(buffer, sending),
                         receiveFrom: receiving.isEmpty ? nil : left, receiveBuffer: mutableBytesOf(scratch, 0..<receiving.count),
                         operation: "ring reduce-scatter step \(step + 1)/\(n - 1) on \(group.name)") { bytes in
                op.combine(destination + bytes.lowerBound / 4, scratch.baseAddress! + bytes.lowerBound / 4, count: bytes.count / 4)
            }
            guard fused else { continue }
            // `receiving` is a piece of this rank's own segment, now complete; the left neighbour's
            // arrives in its place (the reduce-scatter sent that piece, if it did, already).
            op.finish(UnsafeMutableBufferPointer(rebasing: buffer[receiving]), worldSize: n)
            let arriving = part(leftOwn)
            try exchange(group, tag: tag, sendTo: receiving.isEmpty ? nil : right, sendBytes: bytesOf(buffer, receiving),
                         receiveFrom: arriving.isEmpty ? nil : left, receiveBuffer: mutableBytesOf(buffer, arriving),
                         operation: "ring allgather step 1/\(n - 1) on \(group.name)")
        }
    }
    if !startingAllgather { op.finish(UnsafeMutableBufferPointer(rebasing: buffer[own]), worldSize: n) }
}

/// In-place ring allgather: segment r of `buffer` comes from rank r.
public func ringAllgather(_ buffer: UnsafeMutableBufferPointer<Float>, group: ProcessGroup, tag: UInt32? = nil) throws {
    try ringAllgather(UnsafeMutableRawBufferPointer(buffer), elementBytes: 4, group: group, tag: tag)
}

/// The same on raw bytes: the buffer holds `buffer.count / elementBytes` elements, cut into segments
/// as segmentRange does (so integers and other types travel as themselves). Steps before `firstStep`
/// are done already (ringAllreduce runs the first inside the reduce-scatter).
public func ringAllgather(_ buffer: UnsafeMutableRawBufferPointer, elementBytes: Int, group: ProcessGroup, tag: UInt32? = nil,
                          firstStep: Int = 0) throws {
    let n = group.worldSize, rank = group.rank
    guard n > 1 else { return }
    precondition(buffer.count % elementBytes == 0, "\(buffer.count) bytes is not a whole number of \(elementBytes)-byte elements")
    let count = buffer.count / elementBytes
    let tag = tag ?? group.nextTag()
    let right = (rank + 1) % n, left = (rank + n - 1) % n
    func bytes(_ index: Int) -> UnsafeMutableRawBufferPointer {
        let elements = segmentRange(count: count, parts: n, index: index)
        return UnsafeMutableRawBufferPointer(rebasing: buffer[(elements.lowerBound * elementBytes)..<(elements.upperBound * elementBytes)])
    }
    for step in firstStep..<max(firstStep, n - 1) {
        let (sendIndex, receiveIndex) = RingSchedule.allgather(rank: rank, worldSize: n, step: step)
        try exchange(group, tag: tag, sendTo: right, sendBytes: UnsafeRawBufferPointer(bytes(sendIndex)),
                     receiveFrom: left, receiveBuffer: bytes(receiveIndex),
                     operation: "ring allgather step \(step + 1)/\(n - 1) on \(group.name)")
    }
}

public func ringAllreduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp, group: ProcessGroup) throws {
    let tag = group.nextTag()
    try ringReduceScatter(buffer, op: op, group: group, tag: tag, startingAllgather: true)
    try ringAllgather(UnsafeMutableRawBufferPointer(buffer), elementBytes: 4, group: group, tag: tag, firstStep: 1)
}
