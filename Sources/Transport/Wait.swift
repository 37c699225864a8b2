#if canImport(Glibc)
import Glibc
#endif

/// The one spin-then-block wait every socket wait goes through. A blocking poll wake-up costs ~30 us
/// more than a busy one in these VMs, so a caller that may spin polls without blocking until
/// `spinUntil`, then blocks in slices of at most a second until the deadline (EINTR retried).
/// Returns when a descriptor is ready (or a spin slice ended); throws timedOut at the deadline,
/// naming `peer`, and a system error for any other poll failure.
public func waitForSockets(_ fds: inout [pollfd], spinUntil: Double, deadline: Deadline,
                           operation: @autoclosure () -> String, peer: PeerDescription?) throws {
    if Deadline.now() < spinUntil {
        _ = poll(&fds, nfds_t(fds.count), 0)
        return
    }
    while true {
        if deadline.hasPassed {
            throw TransportError(.timedOut(seconds: deadline.seconds), operation: operation(), peer: peer)
        }
        let ready = try systemCall("poll", operation(), peer: peer) {
            Int(poll(&fds, nfds_t(fds.count), min(deadline.pollMilliseconds, 1000)))
        } ?? 0
        if ready > 0 { return }
    }
}
