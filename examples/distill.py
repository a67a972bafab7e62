"""Student-Teacher Distillation: a plain network learns from a trained PTL network (paper Eq. 4).

    python examples/distill.py --output runs/distill

Fine-tunes the teacher (``ptl_net``) and the student's starting point (``reid_net``, the same network
without BConv-Cells), then trains the student with (1-λ)·CE + λ·L1(student, teacher embeddings).
The distilled student has the backbone's inference cost and no latent state.
"""
import argparse
from pathlib import Path

from ptl_timm.data.synth import generate_synthetic
from ptl_timm.engine import DistillConfig, TrainConfig, fine_tune, run_distill


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--output', default='runs/distill')
    parser.add_argument('--backbone', default='resnet18')
    parser.add_argument('--epochs', type=int, default=4)
    parser.add_argument('--num-ids', type=int, default=40)
    parser.add_argument('--lam', type=float, default=0.8)
    args = parser.parse_args(argv)

    output = Path(args.output)
    root = generate_synthetic(output / 'data', 'street', num_ids=args.num_ids, images_per_id=8)
    common = dict(model_args=dict(backbone=args.backbone), pretrained=False, dataset='market1501',
                  data_root=str(root), img_size=(128, 64), batch_size=16, lr=0.05, epochs=args.epochs,
                  lr_step=args.epochs, eval_every=0, num_workers=0, overwrite=True)
    fine_tune(TrainConfig(model='ptl_net', output=str(output / 'teacher'), **common))
    fine_tune(TrainConfig(model='reid_net', output=str(output / 'student_init'), **common))
    result = run_distill(DistillConfig(
        model='reid_net', teacher=str(output / 'teacher' / 'last'), init_checkpoint=str(output / 'student_init' / 'last'),
        lam=args.lam, output=str(output / 'student'), **dict(common, lr=0.01)))
    metrics = result['last']['eval']['synth-street']  # the synthetic domain's own label
    print(f'student mAP {metrics["mAP"]:.2f}  Rank-1 {metrics["rank1"]:.2f}  checkpoint: {result["output"]}/last')
    return result


if __name__ == '__main__':
    main()
