import Foundation
import Rendezvous
import TestSupport
import Transport
import XCTest

/// Regression tests for the reliability issue's findings, with real processes.
final class ReliabilityTests: XCTestCase {
    /// A port nothing listens on right now (bound once by the kernel's choice, then released).
    func freePort() throws -> Int {
        let listener = try Listener(host: "127.0.0.1", port: 0)
        let port = listener.port
        listener.close()
        return port
    }

    /// Finding 1: with a fixed --master-port, a restart must bind the same port again at once (the
    /// store closed its listener when it stopped). Rank 1 fails the first attempt; the second attempt
    /// rendezvouses on the same port and runs real collectives.
    func testRestartWithAFixedMasterPortRebindsTheStorePort() throws {
        let port = try freePort()
        let check = LocalCluster.buildDirectory + "/collective-check"
        let script = "if [ \"$SWIFT_DDP_RESTART_COUNT\" = 0 ] && [ \"$RANK\" = 1 ]; then echo failing on purpose; exit 5; fi; exec \(check) --counts 8,1000 --algorithms ring"
        let (status, output, _) = try runToEnd(LocalCluster.buildDirectory + "/ddp-launch", [
            "--nproc-per-node", "2", "--master-port", String(port), "--max-restarts", "1", "--timeout", "20",
            "--", "/bin/sh", "-c", script])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("all 2 rank(s) finished after 1 restart(s)"), output)
        XCTAssertEqual(output.components(separatedBy: "OK ").count - 1, 2, output)
        XCTAssertFalse(output.contains("Address already in use"), output)
    }

    /// The store releases its port before stop returns, also with a client connected.
    func testStoppedStoreReleasesItsPortAtOnce() throws {
        let identity = JobIdentity(jobID: "rebind", worldSize: 1, secret: randomBytes(16))
        for _ in 0..<3 {
            let server = try StoreServer(host: "127.0.0.1", port: 0, identity: identity)
            let client = try StoreClient(host: "127.0.0.1", port: server.port, identity: identity, rank: -1, timeoutSeconds: 5)
            try client.set("k", "v")
            server.stop()
            // No bind retry: the port must be free now.
            XCTAssertNoThrow(try Listener(host: "127.0.0.1", port: server.port), "port \(server.port) still bound after stop")
            XCTAssertThrowsError(try client.get("k"), "the server ended its client connections")
        }
    }

    /// Finding 2: a connection that sends nothing to a rank's peer port during rendezvous must not
    /// hold that rank: the job completes well before the handshake cap (10 s) or the timeout (20 s).
    func testSilentConnectionsToPeerPortsDoNotStopTheRendezvous() throws {
        let cluster = try LocalCluster(worldSize: 4)
        let extra = ["SWIFT_DDP_TIMEOUT": "20"]
        let early = try cluster.start("collective-check", ["--counts", "8", "--algorithms", "ring", "--allreduce-only"],
                                      ranks: [0, 1, 2], extra: extra)
        // Ranks 0-2 published their peer addresses and wait for rank 3: connect silently to each.
        let client = try StoreClient(host: "127.0.0.1", port: cluster.store.port,
                                     identity: JobIdentity(jobID: cluster.jobID, worldSize: 4, secret: cluster.secret),
                                     rank: -1, timeoutSeconds: 10)
        let addresses = try client.wait(["addr/0", "addr/1", "addr/2"], timeoutSeconds: 20).map { String(decoding: $0, as: UTF8.self) }
        var intruders: [Int32] = []
        for address in addresses {
            let parts = address.split(separator: "|")
            let port = Int(parts[1])!
            for _ in 0..<3 {
                intruders.append(try Socket.connect(host: String(parts[0]), port: port, deadline: Deadline(seconds: 5),
                                                    peer: PeerDescription(host: String(parts[0]), port: port), operation: "intruder"))
            }
        }
        defer { for fd in intruders { close(fd) } }
        let start = Deadline.now()
        let late = try cluster.start("collective-check", ["--counts", "8", "--algorithms", "ring", "--allreduce-only"],
                                     ranks: [3], extra: extra)
        let (outcomes, _) = early.wait(timeout: 30)
        let (lateOutcome, _) = late.wait(timeout: 30)
        let seconds = Deadline.now() - start
        for (rank, outcome) in (outcomes + lateOutcome).enumerated() {
            XCTAssertEqual(outcome.status, 0, "rank \(rank): \(outcome.output)")
        }
        XCTAssertLessThan(seconds, 8, "the silent connections held the rendezvous for \(seconds) s")
    }

    /// Finding 14: a stopped rank makes the others time out and exit first; the launcher must blame
    /// the stopped rank (from the ranks' structured reports), not the first rank to exit.
    func testLauncherBlamesTheStoppedRankNotTheFirstToExit() throws {
        let (process, rest, head) = try startLauncher(LocalCluster.buildDirectory + "/ddp-launch", [
            "--nproc-per-node", "3", "--timeout", "2", "--", "collective-check", "--loop", "--algorithms", "ring", "--counts", "65536"],
            until: "READY", occurrences: 3)
        let pids = launcherRankPIDs(head)
        XCTAssertEqual(pids.count, 3, head)
        guard pids.count == 3 else { process.terminate(); return }
        kill(pids[1], SIGSTOP)
        let text = head + String(decoding: rest.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let failed = text.split(separator: "\n").first { $0.contains("FAILED:") }.map(String.init) ?? ""
        XCTAssertTrue(failed.contains("FAILED: rank 1 (pid \(pids[1])") && failed.contains("stopped responding (process stopped)"), text)
        XCTAssertEqual(survivors(ofLauncher: process.processIdentifier), [])
    }

    /// A rank's peer listener checks the connector's proof itself: a connection that claims rank 1,
    /// answers the challenge with a wrong proof, is refused and logged by rank 0, and the real rank 1
    /// still joins.
    func testPeerListenerRefusesAWrongProof() throws {
        let cluster = try LocalCluster(worldSize: 2)
        let extra = ["SWIFT_DDP_TIMEOUT": "20"]
        let first = try cluster.start("collective-check", ["--counts", "8", "--algorithms", "ring", "--allreduce-only"], ranks: [0], extra: extra)
        let identity = JobIdentity(jobID: cluster.jobID, worldSize: 2, secret: cluster.secret)
        let client = try StoreClient(host: "127.0.0.1", port: cluster.store.port, identity: identity, rank: -1, timeoutSeconds: 10)
        let address = String(decoding: try client.wait(["addr/0"], timeoutSeconds: 20)[0], as: UTF8.self).split(separator: "|")
        let port = Int(address[1])!
        let fd = try Socket.connect(host: String(address[0]), port: port, deadline: Deadline(seconds: 5),
                                    peer: PeerDescription(host: String(address[0]), port: port), operation: "impostor")
        let impostor = Connection(fd: fd, peer: PeerDescription(host: String(address[0]), port: port), policy: WaitPolicy(timeoutSeconds: 5, spinMicroseconds: 0))
        let error = handshakeWithWrongProof(impostor, identity: identity, rank: 1)
        XCTAssertNotNil(error, "rank 0 welcomed a wrong proof")
        let second = try cluster.start("collective-check", ["--counts", "8", "--algorithms", "ring", "--allreduce-only"], ranks: [1], extra: extra)
        let (outcomes, _) = first.wait(timeout: 30)
        XCTAssertEqual(second.wait(timeout: 30).outcomes[0].status, 0)
        XCTAssertEqual(outcomes[0].status, 0, outcomes[0].output)
        XCTAssertTrue(outcomes[0].output.contains("wrong job secret"), outcomes[0].output)
    }
}
