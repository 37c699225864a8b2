import Foundation

/// On SIGINT or SIGTERM the launcher passes the signal to every worker, waits the grace period,
/// SIGKILLs stragglers and exits 128 + signal. The sources are returned so the caller keeps them alive.
/// `current` gives the group running now (restarts replace it).
public func forwardTerminationSignals(to current: @escaping @Sendable () -> WorkerGroup?,
                                      log: @escaping @Sendable (String) -> Void) -> [DispatchSourceSignal] {
    [SIGINT, SIGTERM].map { sig in
        signal(sig, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        source.setEventHandler {
            log("[launcher] received \(signalName(sig)); stopping all ranks")
            current()?.terminateAll(signal: sig)
            exit(128 + sig)
        }
        source.resume()
        return source
    }
}
