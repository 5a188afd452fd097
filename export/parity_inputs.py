"""The fixed real sentences every exported variant is checked on: English and Chinese, short
and long, alone, in padded batches, and as sentence pairs."""

SENTENCES = [
    "Hello world.",
    "A man is playing a guitar.",
    "The cat sat quietly on the warm windowsill, watching the rain.",
    "Calculus is a branch of mathematics developed by Newton and Leibniz.",
    "Stock markets fell sharply on Monday after the central bank raised interest rates.",
    "She said she would come back tomorrow, but nobody believed her.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was "
    "the season of Light, it was the season of Darkness, it was the spring of hope, it was the "
    "winter of despair.",
    "Why?",
    "The committee will review all applications received before the end of March and announce "
    "the results in early May, after consulting with external experts on each proposal.",
    "Two dogs are running through a field of tall grass.",
    "北京是中华人民共和国的首都。",
    "今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个分支，它使计算机能够从数据中学习。",
    "长江是亚洲最长的河流，全长约六千三百公里，流经中国多个省份，最终注入东海。",
    "我喜欢读书。",
    "Mixed text: BERT 模型 handles 中文 and English together.",
]

PAIRS = [
    ("Calculus is a branch of mathematics.", "It was developed by Newton and Leibniz."),
    ("The train leaves at noon.", "Bananas are rich in potassium."),
    ("他打开了门。", "外面下着大雨。"),
    ("A woman is slicing an onion.", "Someone is cutting vegetables in the kitchen."),
]

# Used only to choose which MatMuls int8 keeps in fp32 (never to judge the result). As varied
# as the gate's sentences, very short ones included (int8 errs most on them): with only
# mid-length sentences here, a plan that cleared calibration failed the gate.
CALIBRATION = [
    "Thanks!",
    "Good morning.",
    "Who wrote this?",
    "No.",
    "See you soon.",
    "Where is the station?",
    "I disagree.",
    "Happy birthday, Anna!",
    "The lights went out.",
    "Is it raining?",
    "The bridge, which was built in 1890 and repaired twice after floods, carries more traffic "
    "today than its engineers could ever have imagined, and the city is debating whether to "
    "replace it or to build a second crossing further downstream.",
    "After three years of negotiations, the two companies finally agreed on the terms of the "
    "merger, although several shareholders still say the price undervalues the smaller firm.",
    "A dog is catching a frisbee in the air.",
    "The old library smelled of dust, leather and forgotten afternoons.",
    "Interest rates are expected to remain unchanged until the autumn.",
    "Two men are playing chess in the park.",
    "The museum reopened after a long renovation of its east wing.",
    "He forgot his umbrella on the bus again.",
    "Researchers found that the new vaccine reduced infections by half.",
    "A child is riding a red bicycle down the street.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Heavy snow closed several mountain roads overnight.",
    "Our team won the championship after a dramatic final match.",
    "The software update fixes a bug that drained the battery.",
    "Please send the report by Friday afternoon.",
    "The orchestra performed a symphony by Beethoven.",
    "Prices of fresh vegetables rose sharply this winter.",
    "A woman is reading a newspaper in the park.",
    "The spacecraft entered orbit around Mars last week.",
    "Volunteers planted hundreds of trees along the river bank.",
    "我们明天早上八点在学校门口见面。",
    "这家餐厅的菜很好吃，价格也不贵。",
    "科学家发现了一种新的细菌。",
    "他每天坚持跑步锻炼身体。",
    "谢谢！",
    "你叫什么名字？",
    "这座城市的人口在过去十年里增长了将近一倍，交通和住房的压力也随之越来越大。",
]
