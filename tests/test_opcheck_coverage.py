"""Every operator registered under torch.ops.medkernels has torch.library.opcheck samples."""

import test_causal_conv1d
import test_dct
import test_dilated_attention
import test_multi_order_scan
import test_neighborhood_attention
import test_point_cloud
import test_rswaf_kan
import test_selective_scan
import torch


def test_every_registered_op_has_opcheck_samples():
    registered = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("medkernels::")}
    covered = (set(test_selective_scan.opcheck_samples()) | set(test_neighborhood_attention.opcheck_samples())
               | set(test_causal_conv1d.opcheck_samples()) | set(test_dilated_attention.opcheck_samples())
               | set(test_dct.opcheck_samples()) | set(test_point_cloud.opcheck_samples())
               | set(test_rswaf_kan.opcheck_samples()) | set(test_multi_order_scan.opcheck_samples()))
    assert registered == covered, f"ops without opcheck samples: {sorted(registered - covered)}"
