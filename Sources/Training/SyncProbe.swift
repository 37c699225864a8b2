import FoundationEssentials
import Dispatch
import Glibc
import Support
import Tensors

// What a blocking synchronization costs when more ranks than cores share a host. Each tensor-parallel
// collective and each pipeline hand-off makes a rank wait for a peer; with every core busy, that peer
// may not be running, and the wait lasts until the scheduler gets to it. No formula gives this on a
// shared VM, so the planner measures it: `world` threads on this machine's cores, in groups of
// `group`, each computing for `work` seconds and then making `steps` ring steps over pipes (write to the
// next member, block reading from the previous: a ring collective's pattern with its bytes left out,
// which the alpha-beta model prices; across hosts each step also sleeps out its wire time, after which
// the receiver waits for a core again). The work streams through a private L2's worth of memory, as a
// rank's layer streams its weights and activations: a member that ran in between evicted it, which a
// rank pays after every switch. The penalty per synchronization is the iteration's time beyond the
// work's own time (measured alone, caches warm) shared over the cores.

/// One member of the probe's ring: its pipes, its arithmetic and the memory it streams.
final class ProbeMember: @unchecked Sendable {
    let readFD: Int32, writeFD: Int32
    var sink: Float = 0
    /// What `work` streams through (a float per cache line is read and written).
    let memory: UnsafeMutableBufferPointer<Float>
    init(readFD: Int32, writeFD: Int32, memoryBytes: Int) {
        self.readFD = readFD; self.writeFD = writeFD
        memory = .allocate(capacity: max(memoryBytes / 4, 16))
        memory.initialize(repeating: 0)
    }
    deinit { memory.deallocate() }

    /// Arithmetic the compiler cannot drop, `count` dependent multiply-adds, then a pass over `memory`.
    func work(_ count: Int) {
        var x = sink + 1
        for _ in 0..<count { x = x * 0.999_999 + 1e-7 }
        var line = 0
        while line < memory.count { memory[line] += x; line += 16 }
        sink = x + memory[0]
    }

    func run(iterations: Int, work count: Int, steps: Int, transfer: Double) {
        for _ in 0..<iterations {
            work(count)
            for _ in 0..<steps { Self.ringStep(out: writeFD, in: readFD, transfer: transfer) }
        }
    }

    /// One ring step: tell the next member, then wait for the previous one and, when the step's bytes
    /// cross a link, for `transfer` seconds after it sent, asleep (wire time takes no core, but the
    /// receiver then needs one again: on shared cores, the wait a real receive has).
    static func ringStep(out: Int32, in source: Int32, transfer: Double) {
        var sent = monotonicSeconds()
        while write(out, &sent, 8) < 0 && errno == EINTR {}
        var theirs = 0.0
        while read(source, &theirs, 8) < 0 && errno == EINTR {}
        sleepSeconds(theirs + transfer - monotonicSeconds())
    }
}

/// Sleeps `seconds` (nothing when not positive), through interruptions.
func sleepSeconds(_ seconds: Double) {
    guard seconds > 0 else { return }
    var wait = timespec(tv_sec: Int(seconds), tv_nsec: Int((seconds - seconds.rounded(.down)) * 1e9)), left = timespec()
    while nanosleep(&wait, &left) != 0 && errno == EINTR { wait = left }
}

public enum SyncProbe {
    /// Dependent multiply-adds per second on one core (measured once).
    static let workRate: Double = {
        let member = ProbeMember(readFD: -1, writeFD: -1, memoryBytes: 0)
        let count = 2_000_000
        let t = measure(trials: 3, target: 0.02) { member.work(count) }.best
        return Double(count) / t
    }()

    /// One pass over a member's memory with warm caches (measured once: the same for every probe).
    static let passSeconds: Double = {
        let member = ProbeMember(readFD: -1, writeFD: -1, memoryBytes: memoryBytes)
        return measure(trials: 3, target: 0.01) { member.work(0) }.median
    }()

    /// The longest segment of work the probe runs between two synchronizations.
    public static let longestSegment = 0.03

    /// What each member streams through between synchronizations: this core's L2 (1 MiB when the
    /// system does not say).
    public static let memoryBytes: Int = {
        let l2 = sysconf(Int32(_SC_LEVEL2_CACHE_SIZE))
        return l2 > 0 ? l2 : 1 << 20
    }()

    /// Seconds one synchronization costs beyond its bytes: `world` threads in groups of `group`, each
    /// synchronizing every `work` seconds of its own compute with `steps` ring steps, each step's bytes
    /// `transfer` seconds on a link (0: shared memory, whose copy the alpha-beta model prices), on
    /// `cores` cores.
    public static func penalty(world: Int, group: Int, steps: Int, work: Double, transfer: Double = 0, cores: Int) -> Double {
        guard world > cores, group > 1, steps > 0 else { return 0 }
        // Past a few scheduler slices the wait stops growing with the work before it (4 members, one
        // ring of 6 steps, 2 cores: 0.9, 2.0, 2.8, 2.6 ms after 3, 10, 30, 100 ms of work), and a wide
        // model's whole backward before data parallelism's one wait would keep the probe busy for minutes.
        let work = min(work, longestSegment)
        // The arithmetic makes up what the pass over memory leaves of `work`; `alone` is the whole
        // segment on a core of its own, caches warm.
        let solo = ProbeMember(readFD: -1, writeFD: -1, memoryBytes: memoryBytes)
        let count = max(1, Int((work - passSeconds) * workRate))
        let alone = measure(trials: 3, target: 0.01) { solo.work(count) }.median
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
            for i in 0..<group {
                members.append(ProbeMember(readFD: pipes[(i + group - 1) % group].read, writeFD: pipes[i].write, memoryBytes: memoryBytes))
            }
        }
        // One thread each (a thread pool the size of the cores would leave members unstarted and the
        // ring blocked), as each rank is its own process.
        let done = DispatchSemaphore(value: 0)
        let start = monotonicSeconds()
        for member in members {
            startThread(name: "sync-probe") {
                member.run(iterations: iterations, work: count, steps: steps, transfer: transfer)
                done.signal()
            }
        }
        for _ in members { done.wait() }
        let perIteration = (monotonicSeconds() - start) / Double(iterations)
        let shared = alone * Double(members.count) / Double(min(cores, members.count))
        // The wire time is the alpha-beta model's; what is left is the waiting for cores.
        return max(0, perIteration - shared - Double(steps) * transfer)
    }
}
