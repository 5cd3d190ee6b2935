"""The peer of benchmark 5: the same `echo` calls made one at a time over one session, with the
official MCP Python SDK (what a user would write without a runner). Each answer is checked.

Usage: python mcp_client.py URL N
"""

import asyncio
import sys

from mcp import Client


async def main(url, n):
    async with Client(url) as client:
        for i in range(n):
            message = f"call {i}"
            result = await client.call_tool("echo", {"message": message})
            text = " ".join(getattr(c, "text", "") for c in result.content)
            if result.is_error or message not in text:
                sys.exit(f"call {i} failed: {result}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
