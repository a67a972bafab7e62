"""Multi-step transfer between two synthetic "datasets" (domains), with cross-domain evaluation.

    python examples/transfer.py --output runs/transfer

Step 1 fine-tunes on the ``street`` domain, step 2 continues on ``mall`` from step 1's weights (new
classifier); the table shows mAP / Rank-1 on both domains after every step (paper §5.7, Table 5).
"""
import argparse
from pathlib import Path

from ptl_timm.data.synth import generate_synthetic
from ptl_timm.engine import TransferConfig, run_transfer


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--output', default='runs/transfer')
    parser.add_argument('--backbone', default='resnet18')
    parser.add_argument('--epochs', type=int, default=4)
    parser.add_argument('--num-ids', type=int, default=40)
    args = parser.parse_args(argv)

    output = Path(args.output)
    domains = [dict(name='market1501', label=domain, root=str(generate_synthetic(
        output / 'data', domain, num_ids=args.num_ids, images_per_id=8))) for domain in ('street', 'mall')]
    result = run_transfer(TransferConfig(
        model='ptl_net', model_args=dict(backbone=args.backbone), pretrained=False,
        steps=[dict(dataset=d) for d in domains], test_datasets=domains, img_size=(128, 64), batch_size=16,
        lr=0.05, epochs=args.epochs, lr_step=args.epochs, eval_every=0, num_workers=0,
        output=str(output / 'runs'), overwrite=True))
    print(result['table'], end='')
    return result


if __name__ == '__main__':
    main()
