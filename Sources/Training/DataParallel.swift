import Collectives
import CShims
import Foundation
import NN
import Rendezvous
import Tensors
import Transport

/// DDP semantics over our collectives. Gradients live in one flat buffer in forward (registration)
/// order, so backward finishes them from the end of the buffer towards the start. Buckets are fixed
/// `bucketBytes` slices counted from the end; as soon as backward reports that a bucket's gradients are
/// final, the bucket is handed to a persistent communication thread that averages it across ranks while
/// backward goes on. The optimizer waits only for the buckets still in flight (the "exposed"
/// communication time). Every rank cuts the same buckets in the same order, so collectives match up.
public final class DataParallel: @unchecked Sendable {
    public let group: ProcessGroup
    let parameters: ParameterSet
    let bucketElements: Int
    let algorithm: AllreduceAlgorithm
    let condition = NSCondition()
    var queue: [Range<Int>] = []
    var inFlight = 0
    var failure: Error?
    var stopping = false
    /// Gradients at offsets >= boundary are already queued this step.
    var boundary = 0
    public private(set) var bucketsPerStep = 0

    public init(group: ProcessGroup, parameters: ParameterSet, bucketBytes: Int, algorithm: AllreduceAlgorithm) {
        self.group = group
        self.parameters = parameters
        bucketElements = max(1, bucketBytes / 4)
        self.algorithm = algorithm
        let thread = Thread { [self] in communicationLoop() }
        thread.name = "ddp-communication"
        thread.start()
    }

    deinit { stop() }

    public func stop() {
        condition.lock(); stopping = true; condition.broadcast(); condition.unlock()
    }

    /// Broadcasts rank 0's parameters, then checks that every rank runs the same model and config:
    /// a CRC-32C of the parameter count and `configText` is allgathered, and a rank that differs is named.
    public func synchronizeInitialState(configText: String) throws {
        try broadcast(parameters.values.buffer, root: 0, group: group)
        var text = Array("\(parameters.count)|\(configText)".utf8)
        let hash = text.withUnsafeMutableBytes { ddp_crc32c(0, $0.baseAddress!, $0.count) }
        if let r = try firstRankDiffering(hash, group: group) {
            throw TrainingError("rank \(r) runs a different model or config than rank 0 (hash mismatch); start every rank with the same config and flags")
        }
    }

    /// Called before backward of the step's last micro-batch.
    public func beginStep() {
        condition.lock(); boundary = parameters.count; bucketsPerStep = 0; condition.unlock()
    }

    /// Backward's hook: gradients from `offset` to the end are final; queue every whole bucket.
    public func gradientsReady(from offset: Int) {
        condition.lock()
        while boundary - offset >= bucketElements {
            enqueue((boundary - bucketElements)..<boundary)
            boundary -= bucketElements
        }
        condition.unlock()
    }

    /// Queues what is left and waits for all buckets; returns the seconds spent waiting.
    public func finishStep() throws -> Double {
        let start = Deadline.now()
        condition.lock()
        defer { condition.unlock() }
        if boundary > 0 { enqueue(0..<boundary); boundary = 0 }
        while (inFlight > 0 || !queue.isEmpty) && failure == nil { condition.wait() }
        if let failure { throw failure }
        return Deadline.now() - start
    }

    /// Caller holds the lock.
    private func enqueue(_ range: Range<Int>) {
        queue.append(range)
        bucketsPerStep += 1
        condition.broadcast()
    }

    private func communicationLoop() {
        while true {
            condition.lock()
            while queue.isEmpty && !stopping { condition.wait() }
            if stopping { condition.unlock(); return }
            let bucket = queue.removeFirst()
            inFlight += 1
            condition.unlock()
            var error: Error?
            do {
                let slice = UnsafeMutableBufferPointer(rebasing: parameters.gradients.buffer[bucket])
                try allreduce(slice, op: .average, algorithm: algorithm, group: group)
            } catch let e {
                error = e
            }
            condition.lock()
            inFlight -= 1
            if let error, failure == nil { failure = error; queue.removeAll() }
            condition.broadcast()
            condition.unlock()
        }
    }

    /// Mean of one value over ranks (for logging), on the caller's thread; call only between steps.
    public func average(_ value: Double) throws -> Double {
        let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: 1)
        defer { buffer.deallocate() }
        buffer[0] = Float(value)
        try allreduce(buffer, op: .average, algorithm: .halvingDoubling, group: group)
        return Double(buffer[0])
    }

    /// Fails unless every rank holds bitwise-identical parameters (CRC-32C allgathered).
    public func verifyReplicas(iteration: Int) throws {
        if let r = try firstRankDiffering(checksum(of: parameters.values.buffer), group: group) {
            throw TrainingError("after iteration \(iteration) rank \(r)'s parameters differ bitwise from rank 0's")
        }
    }
}

public struct TrainingError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
