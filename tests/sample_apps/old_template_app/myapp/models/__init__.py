from .detail import DetailItem as DetailItem
