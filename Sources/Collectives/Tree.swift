import Rendezvous
import Transport

// Tree allreduce (latency-friendly for mid-size messages at larger world sizes).
// Ranks form a binary tree rooted at rank 0 and the vector moves in chunks. Reduce: each chunk flows up;
// a rank adds its children's partial sums to its own and passes the chunk to its parent. Broadcast: the
// root's finished chunks flow back down. Both directions run at once: in step s a rank at depth d takes
// chunk s from its children while handing them finished chunk s-d-1, then gives chunk s to its parent
// while taking finished chunk s-d from it, so every link carries data both ways (the reduce and the
// broadcast no longer wait for each other: twice the busbw of a reduce-then-broadcast tree). Each element
// is added in a fixed tree order and then copied, so all ranks end bitwise identical.

public let treeChunkElements = 32 << 10

public func treeAllreduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp, group: ProcessGroup) throws {
    let n = group.worldSize, rank = group.rank
    guard n > 1 else { return }
    let tag = group.nextTag()
    let parent = TreeSchedule.parent(of: rank), children = TreeSchedule.children(of: rank, worldSize: n)
    let depth = TreeSchedule.depth(of: rank), maxDepth = TreeSchedule.depth(of: n - 1)
    let scratch = group.scratchFloats(treeChunkElements)
    let chunks = (buffer.count + treeChunkElements - 1) / treeChunkElements
    func chunk(_ k: Int) -> Range<Int>? {
        k >= 0 && k < chunks ? (k * treeChunkElements)..<min((k + 1) * treeChunkElements, buffer.count) : nil
    }
    let nothing = UnsafeRawBufferPointer(start: nil, count: 0), nowhere = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    for step in 0..<(chunks + maxDepth + 1) {
        let up = chunk(step), down = chunk(step - depth - 1)
        for child in children where up != nil || down != nil {
            try exchange(group, tag: tag, sendTo: down == nil ? nil : child, sendBytes: down.map { bytesOf(buffer, $0) } ?? nothing,
                         receiveFrom: up == nil ? nil : child, receiveBuffer: up.map { mutableBytesOf(scratch, 0..<$0.count) } ?? nowhere,
                         operation: "tree allreduce on \(group.name) (with child \(child))")
            if let up { op.combine(buffer.baseAddress! + up.lowerBound, scratch.baseAddress!, count: up.count) }
        }
        if let parent {
            let fromParent = chunk(step - depth)
            guard up != nil || fromParent != nil else { continue }
            try exchange(group, tag: tag, sendTo: up == nil ? nil : parent, sendBytes: up.map { bytesOf(buffer, $0) } ?? nothing,
                         receiveFrom: fromParent == nil ? nil : parent,
                         receiveBuffer: fromParent.map { mutableBytesOf(buffer, $0) } ?? nowhere,
                         operation: "tree allreduce on \(group.name) (with parent \(parent))")
        } else if let up {
            op.finish(UnsafeMutableBufferPointer(rebasing: buffer[up]), worldSize: n)
        }
    }
}

/// Chunked broadcast of raw bytes from `root` down a binary tree over ranks relative to the root.
public func treeBroadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int, group: ProcessGroup, tag: UInt32? = nil) throws {
    let n = group.worldSize, rank = group.rank
    guard n > 1 else { return }
    precondition(root >= 0 && root < n, "broadcast root \(root) outside 0..<\(n)")
    let tag = tag ?? group.nextTag()
    let relative = (rank - root + n) % n
    let parent = TreeSchedule.parent(of: relative).map { ($0 + root) % n }
    let children = TreeSchedule.children(of: relative, worldSize: n).map { ($0 + root) % n }
    let chunkBytes = treeChunkElements * 4
    var start = 0
    while start < buffer.count {
        let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[start..<min(start + chunkBytes, buffer.count)])
        if let parent {
            try exchange(group, tag: tag, sendTo: nil, sendBytes: UnsafeRawBufferPointer(start: nil, count: 0),
                         receiveFrom: parent, receiveBuffer: chunk, operation: "broadcast on \(group.name) (from the parent)")
        }
        for child in children {
            try exchange(group, tag: tag, sendTo: child, sendBytes: UnsafeRawBufferPointer(chunk),
                         receiveFrom: nil, receiveBuffer: UnsafeMutableRawBufferPointer(start: nil, count: 0),
                         operation: "broadcast on \(group.name) (to a child)")
        }
        start += chunk.count
    }
}
