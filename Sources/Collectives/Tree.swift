import Rendezvous
import Transport

// Tree allreduce (latency-friendly for mid-size messages at larger world sizes).
// Ranks form a binary tree rooted at rank 0. Reduce: the vector flows up in chunks; for each chunk a
// rank receives its children's partial sums, adds them to its own, and passes the chunk to its parent
// while the children already send the next one (the socket buffers keep the pipeline full). Broadcast:
// the root's result flows down chunk by chunk the same way. Each element is added in a fixed tree order
// and then copied, so all ranks end bitwise identical.

public let treeChunkElements = 32 << 10

public func treeAllreduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp, group: ProcessGroup) throws {
    let n = group.worldSize, rank = group.rank
    guard n > 1 else { return }
    let tag = group.nextTag()
    let parent = TreeSchedule.parent(of: rank), children = TreeSchedule.children(of: rank, worldSize: n)
    let scratch = group.scratchFloats(treeChunkElements)
    var start = 0
    while start < buffer.count {
        let chunk = start..<min(start + treeChunkElements, buffer.count)
        for child in children {
            try exchange(group, tag: tag, sendTo: nil, sendBytes: UnsafeRawBufferPointer(start: nil, count: 0),
                         receiveFrom: child, receiveBuffer: mutableBytesOf(scratch, 0..<chunk.count),
                         operation: "tree reduce on rank \(rank) (from a child)")
            op.combine(buffer.baseAddress! + chunk.lowerBound, scratch.baseAddress!, count: chunk.count)
        }
        if let parent {
            try exchange(group, tag: tag, sendTo: parent, sendBytes: bytesOf(buffer, chunk),
                         receiveFrom: nil, receiveBuffer: UnsafeMutableRawBufferPointer(start: nil, count: 0),
                         operation: "tree reduce on rank \(rank) (to the parent)")
        } else {
            op.finish(UnsafeMutableBufferPointer(rebasing: buffer[chunk]), worldSize: n)
        }
        start = chunk.upperBound
    }
    try treeBroadcast(buffer, root: 0, group: group, tag: tag)
}

/// Chunked broadcast from `root` down a binary tree over ranks relative to the root.
public func treeBroadcast(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int, group: ProcessGroup, tag: UInt32? = nil) throws {
    let n = group.worldSize, rank = group.rank
    guard n > 1 else { return }
    precondition(root >= 0 && root < n, "broadcast root \(root) outside 0..<\(n)")
    let tag = tag ?? group.nextTag()
    let relative = (rank - root + n) % n
    let parent = TreeSchedule.parent(of: relative).map { ($0 + root) % n }
    let children = TreeSchedule.children(of: relative, worldSize: n).map { ($0 + root) % n }
    var start = 0
    while start < buffer.count {
        let chunk = start..<min(start + treeChunkElements, buffer.count)
        if let parent {
            try exchange(group, tag: tag, sendTo: nil, sendBytes: UnsafeRawBufferPointer(start: nil, count: 0),
                         receiveFrom: parent, receiveBuffer: mutableBytesOf(buffer, chunk),
                         operation: "broadcast on rank \(rank) (from the parent)")
        }
        for child in children {
            try exchange(group, tag: tag, sendTo: child, sendBytes: bytesOf(buffer, chunk),
                         receiveFrom: nil, receiveBuffer: UnsafeMutableRawBufferPointer(start: nil, count: 0),
                         operation: "broadcast on rank \(rank) (to a child)")
        }
        start = chunk.upperBound
    }
}
