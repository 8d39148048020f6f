"""The one training/evaluation loop shared by finetune, distill and prune recovery."""
