"""Start a real DJL server for a test, printing its log's tail when it fails to come up."""

from loraship.runtime import Server, free_port


def start_server(model_dir, tmp_path_factory, timeout: float = 240) -> Server:
    log = open(tmp_path_factory.mktemp("logs") / "server.log", "w+")
    srv = Server(model_dir, port=free_port(), log_file=log)
    try:
        srv.wait_ready(timeout=timeout)
    except Exception:
        log.seek(0)
        print(log.read()[-5000:])
        srv.stop()
        raise
    return srv
