"""`tom submit` as a user runs it: a subprocess against the real Temporal dev server and a worker."""
import asyncio
import sys

from tests.conftest import REPO


async def tom(config_file, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.cli", "--config", str(config_file), *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


async def test_submit_wait_prints_the_final_order(order_worker, config_file):
    code, out, err = await tom(config_file, "submit", "--symbol", "ETH/USDT", "--side", "buy", "--quantity", "0.05",
                               "--signal-id", "cli-wait-1", "--wait")
    assert code == 0 and "Traceback" not in err, err
    assert "order-cli-wait-1 started" in out
    assert "state       filled" in out and "buy 0.05 ETH/USDT on simulation" in out, out


async def test_submit_refuses_a_bad_signal_in_one_line(config_file):
    code, out, err = await tom(config_file, "submit", "--symbol", "ETH/USDT", "--side", "buy", "--quantity", "1_0")
    assert code == 1 and "Traceback" not in err and err.count("\n") == 1, err
    assert "invalid signal: quantity" in err


async def test_cancel_and_amend_refuse_bad_arguments_in_one_line(config_file):
    code, _, err = await tom(config_file, "cancel", "order-x", "--reason", "r" * 600)
    assert code == 1 and "Traceback" not in err and "reason: String should have at most 500 characters" in err, err
    code, _, err = await tom(config_file, "amend", "order-x", "--quantity", "1e30")
    assert code == 1 and "Traceback" not in err and "quantity: Value error, not a plausible value" in err or "quantity: not a plausible value" in err, err
    code, _, err = await tom(config_file, "amend", "order-x")
    assert code == 1 and "amend needs quantity or limit_price" in err, err


async def test_submit_file_refuses_duplicate_keys(config_file, tmp_path):
    path = tmp_path / "signals.json"
    path.write_text('{"signal_id": "f1", "strategy_id": "s", "symbol": "ETH/USDT", "side": "buy", '
                    '"quantity": "0.01", "quantity": "10"}')
    code, _, err = await tom(config_file, "submit", "--file", str(path))
    assert code == 1 and "duplicate key 'quantity'" in err, err
