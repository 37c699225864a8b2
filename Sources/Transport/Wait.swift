#if canImport(Glibc)
import Glibc
#endif

/// The one spin-then-block wait every socket wait goes through. A blocking poll wake-up costs ~30 us
/// more than a busy one in these VMs, so a caller that may spin polls without blocking until
/// `spinUntil`, then blocks in slices of at most a second until the deadline (EINTR retried). With
/// `yielding` (more ranks than cores) each empty spin poll gives the core away with sched_yield, so the
/// peer we wait for can run: 4 ranks on 2 cores, 4 KiB halving-doubling allreduce 46-49 us against
/// 59-69 us blocking at once, all-to-all of 16 KiB 0.26 GB/s against 0.08.
/// Returns when a descriptor is ready (or a spin slice ended); throws timedOut at the deadline,
/// naming `peer`, and a system error for any other poll failure.
/// `sliceMilliseconds` bounds one blocking poll; a wait that must also re-check shared memory passes a
/// short one.
public func waitForSockets(_ fds: inout [pollfd], spinUntil: Double, yielding: Bool = false, deadline: Deadline,
                           sliceMilliseconds: Int32 = 1000,
                           operation: @autoclosure () -> String, peer: PeerDescription?) throws {
    if Deadline.now() < spinUntil {
        if poll(&fds, nfds_t(fds.count), 0) == 0 && yielding { sched_yield() }
        return
    }
    while true {
        if deadline.hasPassed {
            throw TransportError(.timedOut(seconds: deadline.seconds), operation: operation(), peer: peer)
        }
        let ready = try systemCall("poll", operation(), peer: peer) {
            Int(poll(&fds, nfds_t(fds.count), min(deadline.pollMilliseconds, sliceMilliseconds)))
        } ?? 0
        if ready > 0 || sliceMilliseconds < 1000 { return }
    }
}
