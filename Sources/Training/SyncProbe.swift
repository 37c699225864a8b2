import Foundation
import Tensors

// What a blocking synchronization costs when more ranks than cores share a host. Each tensor-parallel
// collective and each pipeline hand-off makes a rank wait for a peer; with every core busy, that peer
// may not be running, and the wait lasts until the scheduler gets to it. No formula gives this on a
// shared VM, so the planner measures it: `world` threads on this machine's cores, in groups of
// `group`, each doing `work` seconds of arithmetic and then `steps` ring steps over pipes (write to the
// next member, block reading from the previous: a ring collective's pattern with its bytes left out,
// which the alpha-beta model prices). The penalty per synchronization is the iteration's time beyond
// the arithmetic's own time shared over the cores.

/// One member of the probe's ring: its pipes and its arithmetic.
private final class ProbeMember: @unchecked Sendable {
    let readFD: Int32, writeFD: Int32
    var sink: Float = 0
    init(readFD: Int32, writeFD: Int32) { self.readFD = readFD; self.writeFD = writeFD }

    /// Arithmetic the compiler cannot drop: `count` dependent multiply-adds.
    func work(_ count: Int) {
        var x = sink + 1
        for _ in 0..<count { x = x * 0.999_999 + 1e-7 }
        sink = x
    }

    func run(iterations: Int, work count: Int, steps: Int) {
        var byte: UInt8 = 1
        for _ in 0..<iterations {
            work(count)
            for _ in 0..<steps {
                while write(writeFD, &byte, 1) < 0 && errno == EINTR {}
                while read(readFD, &byte, 1) < 0 && errno == EINTR {}
            }
        }
    }
}

public enum SyncProbe {
    /// Dependent multiply-adds per second on one core (measured once).
    static let workRate: Double = {
        let member = ProbeMember(readFD: -1, writeFD: -1)
        let count = 2_000_000
        let t = measure(trials: 3, target: 0.02) { member.work(count) }.best
        return Double(count) / t
    }()

    /// Seconds one synchronization costs beyond its bytes: `world` threads in groups of `group`, each
    /// synchronizing every `work` seconds of its own compute with `steps` ring steps, on `cores` cores.
    public static func penalty(world: Int, group: Int, steps: Int, work: Double, cores: Int) -> Double {
        guard world > cores, group > 1, steps > 0 else { return 0 }
        let count = max(1, Int(work * workRate))
        let iterations = max(8, min(200, Int(0.15 / max(work * Double(world) / Double(cores), 1e-5))))
        var members: [ProbeMember] = []
        var fds: [Int32] = []
        defer { fds.forEach { close($0) } }
        for _ in 0..<(world / group) {
            // Member i writes to pipe i (read by member i + 1) and reads pipe i - 1.
            var pipes: [(read: Int32, write: Int32)] = []
            for _ in 0..<group {
                var p: [Int32] = [0, 0]
                guard pipe(&p) == 0 else { return 0 }
                fds += p
                pipes.append((p[0], p[1]))
            }
            for i in 0..<group { members.append(ProbeMember(readFD: pipes[(i + group - 1) % group].read, writeFD: pipes[i].write)) }
        }
        // One thread each (a thread pool the size of the cores would leave members unstarted and the
        // ring blocked), as each rank is its own process.
        let done = DispatchSemaphore(value: 0)
        let start = monotonicSeconds()
        for member in members {
            Thread.detachNewThread {
                member.run(iterations: iterations, work: count, steps: steps)
                done.signal()
            }
        }
        for _ in members { done.wait() }
        let perIteration = (monotonicSeconds() - start) / Double(iterations)
        let shared = work * Double(members.count) / Double(min(cores, members.count))
        return max(0, perIteration - shared)
    }
}
