"""Run a command through the OpenSandbox Python SDK, pointed straight at execd.

    pip install opensandbox==1.1.1
    python3 examples/quickstart.py       # EXECD_ADDR defaults to 127.0.0.1:44772
"""

import asyncio
import os
from datetime import timedelta

from opensandbox.adapters.command_adapter import CommandsAdapter
from opensandbox.config import ConnectionConfig
from opensandbox.models.sandboxes import SandboxEndpoint


async def main() -> None:
    addr = os.environ.get("EXECD_ADDR", "127.0.0.1:44772")
    cfg = ConnectionConfig(protocol="http", request_timeout=timedelta(seconds=30)).with_transport_if_missing()
    cmds = CommandsAdapter(cfg, SandboxEndpoint(endpoint=addr, headers={}))
    ex = await cmds.run("echo hi")
    print("exit code:", ex.exit_code)
    print("stdout:", "".join(m.text for m in ex.logs.stdout), end="")
    await cfg.close_transport_if_owned()


asyncio.run(main())
