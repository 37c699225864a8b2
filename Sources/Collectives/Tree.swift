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
    let tree = BinaryTree(worldSize: n, mirrored: false), tag = group.nextTag()
    let parent = tree.parent(of: rank), children = tree.children(of: rank), depth = tree.depth(of: rank)
    let scratch = group.scratchFloats(treeChunkElements)
    let chunks = (buffer.count + treeChunkElements - 1) / treeChunkElements
    let nothing = UnsafeRawBufferPointer(start: nil, count: 0), nowhere = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    for step in 0..<(chunks + tree.maxDepth + 1) {
        let up = treeChunk(step, of: buffer.count), down = treeChunk(step - depth - 1, of: buffer.count)
        for child in children where up != nil || down != nil {
            try exchange(group, tag: tag, sendTo: down == nil ? nil : child, sendBytes: down.map { bytesOf(buffer, $0) } ?? nothing,
                         receiveFrom: up == nil ? nil : child, receiveBuffer: up.map { mutableBytesOf(scratch, 0..<$0.count) } ?? nowhere,
                         operation: "tree allreduce on \(group.name) (with child \(child))")
            if let up { op.combine(buffer.baseAddress! + up.lowerBound, scratch.baseAddress!, count: up.count) }
        }
        if let parent {
            let fromParent = treeChunk(step - depth, of: buffer.count)
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

/// Chunk `k` of a vector of `count` elements cut into treeChunkElements (nil outside it).
func treeChunk(_ k: Int, of count: Int) -> Range<Int>? {
    let chunks = (count + treeChunkElements - 1) / treeChunkElements
    return k >= 0 && k < chunks ? (k * treeChunkElements)..<min((k + 1) * treeChunkElements, count) : nil
}

/// Double binary tree allreduce (NCCL's): the vector's first half goes through the heap tree rooted at
/// rank 0, its second half through the mirrored tree (rank r at position n-1-r), where the first
/// tree's leaves are the interior nodes. Each rank is interior in at most one tree, so it forwards half
/// the data a single tree's interior ranks do, and both trees move at once: every step is one exchange
/// of all of a rank's messages in both trees (its links busy in both directions). To make that possible
/// a chunk waits one step between being reduced and going up: a rank at depth d of H receives chunk k
/// from its children at step k+H-d and sends it to its parent at k+H-d+1; the root finishes it at k+H;
/// it comes down to depth d at step k+H+d. No message of a step then depends on another of the same
/// step. Messages between two ranks are listed tree by tree on both sides, so a connection carrying
/// both trees' messages matches them in order. Each element is reduced in a fixed order at its tree's
/// root and copied down: bitwise equal on every rank.
public func doubleTreeAllreduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp, group: ProcessGroup) throws {
    let n = group.worldSize, rank = group.rank
    guard n > 1 else { return }
    let trees = [BinaryTree(worldSize: n, mirrored: false), BinaryTree(worldSize: n, mirrored: true)]
    let tag = group.nextTag(), h = trees[0].maxDepth
    let middle = buffer.count / 2
    let halves = [UnsafeMutableBufferPointer(rebasing: buffer[..<middle]), UnsafeMutableBufferPointer(rebasing: buffer[middle...])]
    let chunks = (buffer.count - middle + treeChunkElements - 1) / treeChunkElements
    // A landing place per (tree, child): both children of both trees may arrive in one step.
    let scratch = group.scratchFloats(4 * treeChunkElements)
    for step in 0..<(chunks + 2 * h) {
        var sending: [OutgoingMessage] = [], receiving: [IncomingMessage] = []
        var combine: [(half: Int, range: Range<Int>, slot: Int)] = []
        var finish: (half: Int, range: Range<Int>)?
        for (t, tree) in trees.enumerated() {
            let half = halves[t], d = tree.depth(of: rank)
            func chunk(_ k: Int) -> Range<Int>? { treeChunk(k, of: half.count) }
            for (c, child) in tree.children(of: rank).enumerated() {
                let connection = group.connection(to: child)
                if let up = chunk(step - h + d) {
                    let slot = (2 * t + c) * treeChunkElements
                    receiving.append(IncomingMessage(connection, tag: tag, buffer: mutableBytesOf(scratch, slot..<(slot + up.count))))
                    combine.append((t, up, slot))
                }
                if let down = chunk(step - h - d - 1) { sending.append(OutgoingMessage(connection, tag: tag, bytes: bytesOf(half, down))) }
            }
            if let parent = tree.parent(of: rank) {
                let connection = group.connection(to: parent)
                if let up = chunk(step - h + d - 1) { sending.append(OutgoingMessage(connection, tag: tag, bytes: bytesOf(half, up))) }
                if let down = chunk(step - h - d) { receiving.append(IncomingMessage(connection, tag: tag, buffer: mutableBytesOf(half, down))) }
            } else if let up = chunk(step - h) {
                finish = (t, up)
            }
        }
        if !sending.isEmpty || !receiving.isEmpty {
            try exchangeMessages(sending: sending, receiving: receiving, settings: group.exchangeSettings,
                                 operation: "double-tree allreduce on \(group.name) (step \(step))")
        }
        for c in combine { op.combine(halves[c.half].baseAddress! + c.range.lowerBound, scratch.baseAddress! + c.slot, count: c.range.count) }
        if let finish { op.finish(UnsafeMutableBufferPointer(rebasing: halves[finish.half][finish.range]), worldSize: n) }
    }
}

/// A binary tree over the ranks in heap order of positions: rank r at position r, or n-1-r mirrored.
struct BinaryTree {
    let worldSize: Int, mirrored: Bool
    func position(_ rank: Int) -> Int { mirrored ? worldSize - 1 - rank : rank }
    func rank(_ position: Int) -> Int { mirrored ? worldSize - 1 - position : position }
    func parent(of r: Int) -> Int? { TreeSchedule.parent(of: position(r)).map(rank) }
    func children(of r: Int) -> [Int] { TreeSchedule.children(of: position(r), worldSize: worldSize).map(rank) }
    func depth(of r: Int) -> Int { TreeSchedule.depth(of: position(r)) }
    var maxDepth: Int { TreeSchedule.depth(of: worldSize - 1) }
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
