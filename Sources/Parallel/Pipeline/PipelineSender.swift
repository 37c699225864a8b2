import Collectives
import FoundationEssentials
import Glibc
import Support
import Rendezvous

// A pipeline stage's sends, on their own thread: a send never stops the stage (the schedules and the
// simulator assume so), even when a message is larger than the socket buffers and the peer is busy
// computing. Messages leave in the order they were queued, which `PipelineSimulator` has checked is
// the order the peers receive them. The receiving thread and this one use opposite directions of the
// same connections, which the transport allows.

final class PipelineSender: @unchecked Sendable {
    struct Message { var values: [Float]; var peer: Int; var tag: Int; var what: String }

    let group: ProcessGroup
    private let lock = Condition()
    private var queue: [Message] = []
    private var sending = false
    private var failure: Error?
    private var stopped = false

    init(group: ProcessGroup) {
        self.group = group
        startThread(name: "pipeline-send") { [unowned self] in self.loop() }
    }

    /// Queues a copy of `values` for `peer`; throws a failure an earlier send met.
    func send(_ values: UnsafePointer<Float>, count: Int, to peer: Int, tag: Int, what: String) throws {
        lock.lock(); defer { lock.unlock() }
        if let failure { throw failure }
        queue.append(Message(values: Array(UnsafeBufferPointer(start: values, count: count)), peer: peer, tag: tag, what: what))
        lock.signal()
    }

    /// Waits until every queued message has left; throws the first failure.
    func flush() throws {
        lock.lock(); defer { lock.unlock() }
        while (!queue.isEmpty || sending) && failure == nil { lock.wait() }
        if let failure { throw failure }
    }

    /// Ends the thread once the queue is empty (or at once after a failure).
    func stop() {
        lock.lock(); stopped = true; lock.broadcast(); lock.unlock()
    }

    private func loop() {
        while true {
            lock.lock()
            while queue.isEmpty && !stopped { lock.wait() }
            if queue.isEmpty || failure != nil { lock.unlock(); return }
            let message = queue.removeFirst()
            sending = true
            lock.unlock()
            var error: Error?
            do {
                try message.values.withUnsafeBytes { try Collectives.send($0, to: message.peer, tag: message.tag, group: group) }
            } catch let e { error = PipelineError(message: "sending \(message.what) to pipeline rank \(message.peer): \(e)") }
            lock.lock()
            sending = false
            if let error, failure == nil { failure = error }
            lock.broadcast()
            lock.unlock()
        }
    }
}

public struct PipelineError: Error, CustomStringConvertible {
    public let message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}
