"""The 1F1B micro-batch order (from the same control flow that drives training) and the loss reduction."""
import pytest
import torch

from megatron_hds.parallel.schedules import masked_mean_loss, run_1f1b


class _NoComm:
    """Communication stub: receives nothing, sends nowhere."""

    def recv_forward(self):
        return None

    def recv_backward(self):
        return None

    def send_forward(self, y):
        pass

    def send_backward(self, g):
        pass

    def send_forward_recv_backward(self, y):
        return None

    def send_backward_recv_forward(self, g):
        return None


def one_f_one_b_order(num_stages: int, stage: int, num_microbatches: int):
    """The ('F'|'B', micro-batch) sequence that run_1f1b executes on `stage`."""
    order = []
    run_1f1b(num_stages, stage, num_microbatches, lambda i, x: order.append(("F", i)),
             lambda i, x, y, g: order.append(("B", i)), _NoComm())
    return order


def _parse(text):
    return [(op[0], int(op[1:])) for op in text.split()]


def test_known_orders():
    # P=4, M=6: stage 0 warms up with 3 forwards, the last stage alternates from the start.
    assert one_f_one_b_order(4, 0, 6) == _parse("F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5")
    assert one_f_one_b_order(4, 2, 6) == _parse("F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 B5")
    assert one_f_one_b_order(4, 3, 6) == _parse("F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5")
    # Fewer micro-batches than stages: warmup is capped at M, all forwards first.
    assert one_f_one_b_order(4, 0, 2) == _parse("F0 F1 B0 B1")
    assert one_f_one_b_order(1, 0, 3) == _parse("F0 B0 F1 B1 F2 B2")


@pytest.mark.parametrize("P", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("M", [1, 2, 3, 4, 7, 16])
def test_order_invariants(P, M):
    for r in range(P):
        order = one_f_one_b_order(P, r, M)
        forwards = [i for op, i in order if op == "F"]
        backwards = [i for op, i in order if op == "B"]
        assert forwards == list(range(M)) and backwards == list(range(M))
        warmup = min(P - r - 1, M)
        assert order[:warmup] == [("F", i) for i in range(warmup)]
        # In flight (forwarded, not yet backwarded) never exceeds warmup + 1: the 1F1B memory bound.
        in_flight = peak = 0
        for op, _ in order:
            in_flight += 1 if op == "F" else -1
            peak = max(peak, in_flight)
        assert peak == min(warmup + 1, M)
        # Steady state strictly alternates F, B after the warmup.
        steady = order[warmup:warmup + 2 * (M - warmup)]
        assert [op for op, _ in steady] == ["F", "B"] * (M - warmup)


def test_masked_mean_loss():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert masked_mean_loss(loss, {}).item() == pytest.approx(3.5)
    mask = torch.tensor([[1, 0, 1], [0, 0, 1]])
    assert masked_mean_loss(loss, {"loss_mask": mask}).item() == pytest.approx(10.0 / 3)
    assert masked_mean_loss(loss, {"loss_mask": torch.zeros(2, 3)}).item() == 0.0
